"""Traffic selectors (RFC 7296 §2.9, §3.13.1): parsing, narrowing, CIDR rendering."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from ike.codec import IPAddress, TrafficSelector
from ike.constants import TsType
from ike.errors import LocalError

__all__ = [
    "TrafficSelector",
    "ts_from_text",
    "ts_for_address",
    "intersect",
    "narrow",
    "covered",
    "to_cidrs",
    "ip",
]

_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "any": 0}


@functools.lru_cache(maxsize=4096)
def ip(text: str) -> IPAddress:
    """A parsed address, cached: peers' address strings repeat for every message."""
    return ipaddress.ip_address(text)


def ts_for_address(addr: IPAddress) -> TrafficSelector:
    kind = TsType.TS_IPV4_ADDR_RANGE if addr.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(kind, 0, 0, 65535, addr, addr)


def ts_from_text(text: str) -> TrafficSelector:
    """``10.0.0.0/24``, ``2001:db8::/64``, ``10.0.0.1-10.0.0.9``, optionally ``[proto/port]``."""
    proto = 0
    sport, eport = 0, 65535
    spec = text.strip()
    if spec.endswith("]") and "[" in spec:
        spec, _, extra = spec[:-1].partition("[")
        pname, _, port = extra.partition("/")
        if pname:
            if pname in _PROTOCOLS:
                proto = _PROTOCOLS[pname]
            elif pname.isdigit() and int(pname) < 256:
                proto = int(pname)
            else:
                raise LocalError(f"traffic selector {text!r}: unknown protocol {pname!r}")
        if port:
            lo, _, hi = port.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LocalError(f"traffic selector {text!r}: bad port {port!r}")
            sport, eport = int(lo), int(hi or lo)
            if not sport <= eport <= 65535:
                raise LocalError(f"traffic selector {text!r}: bad port range {port!r}")
    try:
        if "-" in spec:
            a, _, b = spec.partition("-")
            start, end = ipaddress.ip_address(a), ipaddress.ip_address(b)
            if start.version != end.version or start > end:  # type: ignore[operator]
                raise ValueError
        else:
            net = ipaddress.ip_network(spec, strict=False)
            start, end = net[0], net[-1]
    except ValueError:
        raise LocalError(f"traffic selector {text!r}: not an address, range or subnet") from None
    kind = TsType.TS_IPV4_ADDR_RANGE if start.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(kind, proto, sport, eport, start, end)


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    if a == b:  # the common case (peers configured alike): no new object
        return a
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    proto = a.ip_protocol or b.ip_protocol
    sport, eport = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    start = max(int(a.start_addr), int(b.start_addr))
    end = min(int(a.end_addr), int(b.end_addr))
    if sport > eport or start > end:
        return None
    cls = type(a.start_addr)
    return TrafficSelector(a.ts_type, proto, sport, eport, cls(start), cls(end))


def narrow(
    offered: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """The responder's narrowing (§2.9): every non-empty intersection, without duplicates
    and without one that another covers (e.g. the triggering packet's /32 an initiator
    puts first, §2.9, inside the configured subnet it also offers; strongSwan does so)."""
    out: list[TrafficSelector] = []
    for o in offered:
        for a in allowed:
            i = intersect(o, a)
            if i is not None and i not in out:
                out.append(i)
    return tuple(t for t in out if not any(u != t and intersect(t, u) == t for u in out))


def covered(ts: TrafficSelector, by: Sequence[TrafficSelector]) -> bool:
    """Is `ts` inside one of `by` (the initiator's check of the responder's answer)?"""
    return any(intersect(ts, b) == ts for b in by)


def to_cidrs(ts: TrafficSelector) -> list[str]:
    """The address range as CIDR strings (ports/protocol appended strongSwan-style)."""
    nets = ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)  # type: ignore[arg-type]
    suffix = ""
    if ts.ip_protocol or (ts.start_port, ts.end_port) != (0, 65535):
        port = (
            ""
            if (ts.start_port, ts.end_port) == (0, 65535)
            else (
                str(ts.start_port)
                if ts.start_port == ts.end_port
                else f"{ts.start_port}-{ts.end_port}"
            )
        )
        suffix = f"[{ts.ip_protocol}/{port}]" if port else f"[{ts.ip_protocol}]"
    return [f"{n}{suffix}" for n in nets]
