"""Virtual IPs and DNS over the configuration payload (RFC 7296 §2.19, §3.15), pure.

The exchange the engine runs in IKE_AUTH (ike/ike_auth.py):

    initiator: CP(CFG_REQUEST) with empty INTERNAL_IP4_ADDRESS / INTERNAL_IP6_ADDRESS (or
               the address it holds, e.g. on reauthentication: "this one again, please")
               and empty INTERNAL_IP4_DNS / INTERNAL_IP6_DNS
    responder: CP(CFG_REPLY) with the assigned address(es), the DNS servers and, for
               split tunnelling, INTERNAL_IP4_SUBNET / INTERNAL_IP6_SUBNET

`read_request` / `build_reply` are the responder's half, `build_request` / `read_reply`
the initiator's. Malformed attributes never get here: the codec refuses them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ike.codec import Configuration, ConfigValue, config_attribute
from ike.constants import CfgType, ConfigAttr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IP6_HOST_PREFIX = 128  # strongSwan hands out /128 addresses (the prefix of the pool is ours)


@dataclass(frozen=True, slots=True)
class VirtualIpRequest:
    """What a CFG_REQUEST asks for."""

    ip4: bool = False
    ip6: bool = False
    requested_ip4: ipaddress.IPv4Address | None = None  # a value: the address it would like
    requested_ip6: ipaddress.IPv6Address | None = None
    dns4: bool = False
    dns6: bool = False

    @property
    def wants_address(self) -> bool:
        return self.ip4 or self.ip6


@dataclass(frozen=True, slots=True)
class VirtualIpAssignment:
    """What the responder hands out (CFG_REPLY), as both sides see it."""

    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Interface | None = None
    dns: tuple[IPAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = ()  # split tunnelling: only these go through the tunnel


def _first(cp: Configuration, attr: int) -> tuple[bool, ConfigValue]:
    values = cp.values(attr)
    return (True, values[0]) if values else (False, None)


def read_request(cp: Configuration) -> VirtualIpRequest | None:
    """The responder's reading of a CP; None unless it is a CFG_REQUEST."""
    if cp.cfg_type != CfgType.CFG_REQUEST:
        return None
    has4, want4 = _first(cp, ConfigAttr.INTERNAL_IP4_ADDRESS)
    has6, want6 = _first(cp, ConfigAttr.INTERNAL_IP6_ADDRESS)
    return VirtualIpRequest(
        ip4=has4,
        ip6=has6,
        requested_ip4=want4 if isinstance(want4, ipaddress.IPv4Address) else None,
        requested_ip6=want6.ip if isinstance(want6, ipaddress.IPv6Interface) else None,
        dns4=bool(cp.values(ConfigAttr.INTERNAL_IP4_DNS)),
        dns6=bool(cp.values(ConfigAttr.INTERNAL_IP6_DNS)),
    )


def build_reply(assignment: VirtualIpAssignment) -> Configuration:
    """The CFG_REPLY carrying an assignment (addresses first, then DNS, then subnets)."""
    attrs: list[tuple[int, bytes]] = []
    if assignment.ip4 is not None:
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP4_ADDRESS, assignment.ip4))
    if assignment.ip6 is not None:
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP6_ADDRESS, assignment.ip6))
    for server in assignment.dns:
        kind = ConfigAttr.INTERNAL_IP4_DNS if server.version == 4 else ConfigAttr.INTERNAL_IP6_DNS
        attrs.append(config_attribute(kind, server))
    for net in assignment.subnets:
        kind = (
            ConfigAttr.INTERNAL_IP4_SUBNET if net.version == 4 else ConfigAttr.INTERNAL_IP6_SUBNET
        )
        attrs.append(config_attribute(kind, net))
    return Configuration(CfgType.CFG_REPLY, tuple(attrs))


def build_request(
    *,
    ip4: bool = True,
    ip6: bool = False,
    current_ip4: ipaddress.IPv4Address | None = None,
    current_ip6: ipaddress.IPv6Address | None = None,
    dns: bool = True,
) -> Configuration:
    """The initiator's CFG_REQUEST; `current_*`: the address to ask for again."""
    attrs: list[tuple[int, bytes]] = []
    if ip4:
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP4_ADDRESS, current_ip4))
    if ip6:
        value = ipaddress.IPv6Interface((current_ip6, IP6_HOST_PREFIX)) if current_ip6 else None
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP6_ADDRESS, value))
    if dns and ip4:
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP4_DNS, None))
    if dns and ip6:
        attrs.append(config_attribute(ConfigAttr.INTERNAL_IP6_DNS, None))
    return Configuration(CfgType.CFG_REQUEST, tuple(attrs))


def read_reply(cp: Configuration) -> VirtualIpAssignment | None:
    """The initiator's reading of a CP; None unless it is a CFG_REPLY."""
    if cp.cfg_type != CfgType.CFG_REPLY:
        return None
    _, ip4 = _first(cp, ConfigAttr.INTERNAL_IP4_ADDRESS)
    _, ip6 = _first(cp, ConfigAttr.INTERNAL_IP6_ADDRESS)
    dns = [
        v
        for attr in (ConfigAttr.INTERNAL_IP4_DNS, ConfigAttr.INTERNAL_IP6_DNS)
        for v in cp.values(attr)
        if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    subnets = [
        v
        for attr in (ConfigAttr.INTERNAL_IP4_SUBNET, ConfigAttr.INTERNAL_IP6_SUBNET)
        for v in cp.values(attr)
        if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network)
    ]
    return VirtualIpAssignment(
        ip4=ip4 if isinstance(ip4, ipaddress.IPv4Address) else None,
        ip6=ip6 if isinstance(ip6, ipaddress.IPv6Interface) else None,
        dns=tuple(dns),
        subnets=tuple(subnets),
    )
