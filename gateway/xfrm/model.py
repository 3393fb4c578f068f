"""Read-back views of kernel objects: SAs and policies as decoded from netlink."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from gateway.xfrm import netlink as nl
from gateway.xfrm.scan import SaCounters
from gateway.xfrm.spec import IPAddress, IPNetwork, OffloadResult

AF_INET = 2
AF_INET6 = 10


def addr_bytes(addr: IPAddress) -> bytes:
    """xfrm_address_t bytes of an address."""
    return addr.packed.ljust(16, b"\0")


def addr_from(raw: bytes, family: int) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw[:16])


def net_from(raw: bytes, prefixlen: int, family: int) -> IPNetwork | None:
    if family not in (AF_INET, AF_INET6):
        return None
    return ipaddress.ip_network((addr_from(raw, family), prefixlen), strict=False)


def _name(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw.rstrip("\0")
    return raw.rstrip(b"\0").decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Selector:
    src: IPNetwork | None
    dst: IPNetwork | None
    proto: int = 0
    sport: int = 0
    dport: int = 0

    @classmethod
    def from_msg(cls, m: Any, p: str) -> Selector:
        fam = m[p + "family"]
        return cls(
            net_from(m[p + "saddr"], m[p + "prefixlen_s"], fam),
            net_from(m[p + "daddr"], m[p + "prefixlen_d"], fam),
            m[p + "proto"],
            m[p + "sport"],
            m[p + "dport"],
        )


@dataclass(frozen=True, slots=True)
class Template:
    src: IPAddress | None
    dst: IPAddress | None
    proto: int
    reqid: int
    mode: int


@dataclass(frozen=True, slots=True)
class SaInfo:
    """One XFRM state as the kernel reports it (GETSA / dump / EXPIRE)."""

    src: IPAddress
    dst: IPAddress
    spi: int
    proto: int
    reqid: int
    mode: int
    family: int
    flags: int
    selector: Selector
    aead: str | None = None
    crypt: str | None = None
    auth: str | None = None
    icv_or_trunc_bits: int = 0
    encap: tuple[int, int, int] | None = None  # (type, sport, dport)
    replay_window: int = 0
    esn: bool = False
    oseq: int = 0
    seq: int = 0
    cur_bytes: int = 0
    cur_packets: int = 0
    add_time: int = 0
    replay_errors: int = 0  # stats.replay: replayed packets dropped
    integrity_failed: int = 0
    replay_window_errors: int = 0  # stats.replay_window: too old for the window
    soft_byte_limit: int = nl.XFRM_INF
    hard_byte_limit: int = nl.XFRM_INF
    soft_packet_limit: int = nl.XFRM_INF
    hard_packet_limit: int = nl.XFRM_INF
    offload: OffloadResult = "none"
    offload_ifindex: int = 0
    mark: tuple[int, int] | None = None
    set_mark: int | None = None
    if_id: int | None = None
    encr_key: bytes = field(default=b"", repr=False)
    integ_key: bytes = field(default=b"", repr=False)

    @property
    def counters(self) -> SaCounters:
        """The same numbers as a dump's scan.scan_counters() row."""
        return SaCounters(
            addr_bytes(self.dst),
            self.spi,
            self.reqid,
            self.cur_bytes,
            self.cur_packets,
            self.replay_window_errors,
            self.replay_errors,
            self.integrity_failed,
        )

    @classmethod
    def from_msg(cls, m: Any, p: str = "", attrs: Any = None) -> SaInfo:
        """From a decoded usersa_info (`p`: field prefix); `attrs`: the attributes when
        they are not m's own (a DELSA carries the state in XFRMA_SA, the rest beside)."""
        fam = m[p + "family"]
        kw: dict[str, Any] = {}
        attrs = (m.get("attrs") if attrs is None else attrs) or []
        for name, value in ((a[0], a[1]) for a in attrs):
            if name == "XFRMA_ALG_AEAD":
                kw["aead"] = _name(value["alg_name"])
                kw["icv_or_trunc_bits"] = value["alg_icv_len"]
                kw["encr_key"] = value["alg_key"]
            elif name == "XFRMA_ALG_CRYPT":
                kw["crypt"] = _name(value["alg_name"])
                kw["encr_key"] = value["alg_key"]
            elif name == "XFRMA_ALG_AUTH_TRUNC":
                kw["auth"] = _name(value["alg_name"])
                kw["icv_or_trunc_bits"] = value["alg_trunc_len"]
                kw["integ_key"] = value["alg_key"]
            elif name == "XFRMA_ALG_AUTH" and "auth" not in kw:
                kw["auth"] = _name(value["alg_name"])
            elif name == "XFRMA_ENCAP":
                kw["encap"] = (value["encap_type"], value["encap_sport"], value["encap_dport"])
            elif name == "XFRMA_REPLAY_ESN_VAL":
                kw["replay_window"] = value["replay_window"]
                kw["oseq"] = value["oseq"] | (value["oseq_hi"] << 32)
                kw["seq"] = value["seq"] | (value["seq_hi"] << 32)
            elif name == "XFRMA_REPLAY_VAL":
                kw.setdefault("oseq", value["oseq"])
                kw.setdefault("seq", value["seq"])
            elif name == "XFRMA_OFFLOAD_DEV":
                packet = value["flags"] & nl.XFRM_OFFLOAD_PACKET
                kw["offload"] = "packet" if packet else "crypto"
                kw["offload_ifindex"] = value["ifindex"]
            elif name == "XFRMA_MARK":
                kw["mark"] = (value["v"], value["m"])
            elif name == "XFRMA_SET_MARK":
                kw["set_mark"] = value
            elif name == "XFRMA_IF_ID":
                kw["if_id"] = value
        kw.setdefault("replay_window", m[p + "replay_window"])
        return cls(
            src=addr_from(m[p + "saddr"], fam),
            dst=addr_from(m[p + "id_daddr"], fam),
            spi=m[p + "id_spi"],
            proto=m[p + "id_proto"],
            reqid=m[p + "reqid"],
            mode=m[p + "mode"],
            family=fam,
            flags=m[p + "flags"],
            selector=Selector.from_msg(m, p + "sel_"),
            esn=bool(m[p + "flags"] & nl.XFRM_STATE_ESN),
            cur_bytes=m[p + "curlft_bytes"],
            cur_packets=m[p + "curlft_packets"],
            add_time=m[p + "curlft_add_time"],
            replay_errors=m[p + "stats_replay"],
            integrity_failed=m[p + "stats_integrity_failed"],
            replay_window_errors=m[p + "stats_replay_window"],
            soft_byte_limit=m[p + "lft_soft_byte_limit"],
            hard_byte_limit=m[p + "lft_hard_byte_limit"],
            soft_packet_limit=m[p + "lft_soft_packet_limit"],
            hard_packet_limit=m[p + "lft_hard_packet_limit"],
            **kw,
        )


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One XFRM policy as the kernel reports it."""

    direction: int
    selector: Selector
    priority: int
    index: int
    action: int
    templates: tuple[Template, ...] = ()
    mark: tuple[int, int] | None = None
    if_id: int | None = None

    @property
    def reqids(self) -> set[int]:
        return {t.reqid for t in self.templates}

    @classmethod
    def from_msg(cls, m: Any, p: str = "") -> PolicyInfo:
        templates: list[Template] = []
        kw: dict[str, Any] = {}
        for name, value in ((a[0], a[1]) for a in (m.get("attrs") or [])):
            if name == "XFRMA_TMPL":
                for t in value["templates"]:
                    fam = t["family"]
                    templates.append(
                        Template(
                            addr_from(t["saddr"], fam) if fam else None,
                            addr_from(t["id_daddr"], fam) if fam else None,
                            t["id_proto"],
                            t["reqid"],
                            t["mode"],
                        )
                    )
            elif name == "XFRMA_MARK":
                kw["mark"] = (value["v"], value["m"])
            elif name == "XFRMA_IF_ID":
                kw["if_id"] = value
        return cls(
            direction=m[p + "dir"],
            selector=Selector.from_msg(m, p + "sel_"),
            priority=m[p + "priority"],
            index=m[p + "index"],
            action=m[p + "action"],
            templates=tuple(templates),
            **kw,
        )
