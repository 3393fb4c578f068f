"""Lean readers of SA/policy dumps: only what ownership and deletion need.

Decoding a whole dump through the pyroute2 classes costs ~0.1-0.2 ms per object; a
start-up reconcile over tens of thousands of leftovers needs only reqid and identity.
Offsets come from the same field lists as the pyroute2 classes (gateway.xfrm.netlink).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

from gateway.xfrm import netlink as nl


def field_offsets(fields: tuple[tuple[str, str], ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    pos = 0
    for name, fmt in fields:
        out.setdefault(name, pos)
        pos += struct.calcsize(fmt)
    return out


_SA = field_offsets(nl.USERSA_INFO)
_SA_SIZE = nl.layout_size(nl.USERSA_INFO)
_POL = field_offsets(nl.USERPOLICY_INFO)
_POL_SIZE = nl.layout_size(nl.USERPOLICY_INFO)
_TMPL_SIZE = nl.layout_size(nl.USER_TMPL)
_TMPL_REQID = field_offsets(nl.USER_TMPL)["reqid"]
XFRMA_TMPL, XFRMA_MARK, XFRMA_IF_ID = 5, 21, 31


@dataclass(frozen=True, slots=True)
class StateRef:
    reqid: int
    daddr: bytes  # xfrm_address_t
    spi: int
    family: int
    proto: int
    key_attrs: bytes  # the XFRMA_MARK attribute, needed to address the state again


@dataclass(frozen=True, slots=True)
class PolicyRef:
    index: int
    direction: int
    reqids: frozenset[int]
    key_attrs: bytes  # XFRMA_MARK / XFRMA_IF_ID attributes


def _attrs(payload: bytes, start: int) -> list[tuple[int, bytes, bytes]]:
    """(type, value, whole attribute) of each attribute from `start`."""
    out = []
    pos, end = start, len(payload)
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", payload, pos)
        if alen < 4 or pos + alen > end:
            break
        out.append((atype & 0x3FFF, payload[pos + 4 : pos + alen], payload[pos : pos + alen]))
        pos += (alen + 3) & ~3
    return out


def scan_state(payload: bytes) -> StateRef:
    """A NEWSA dump message's payload (after the netlink header)."""
    (spi,) = struct.unpack_from(">I", payload, _SA["id_spi"])
    (reqid,) = struct.unpack_from("=I", payload, _SA["reqid"])
    (family,) = struct.unpack_from("=H", payload, _SA["family"])
    keys = b"".join(raw for t, _, raw in _attrs(payload, _SA_SIZE) if t == XFRMA_MARK)
    daddr = payload[_SA["id_daddr"] : _SA["id_daddr"] + 16]
    return StateRef(reqid, daddr, spi, family, payload[_SA["id_proto"]], keys)


def scan_policy(payload: bytes) -> PolicyRef:
    """A NEWPOLICY dump message's payload."""
    (index,) = struct.unpack_from("=I", payload, _POL["index"])
    reqids: set[int] = set()
    keys = b""
    for t, value, raw in _attrs(payload, _POL_SIZE):
        if t == XFRMA_TMPL:
            for o in range(0, len(value) - _TMPL_SIZE + 1, _TMPL_SIZE):
                reqids.add(struct.unpack_from("=I", value, o + _TMPL_REQID)[0])
        elif t in (XFRMA_MARK, XFRMA_IF_ID):
            keys += raw
    return PolicyRef(index, payload[_POL["dir"]], frozenset(reqids), keys)


class SaCounters(NamedTuple):
    """One state's counters as the kernel keeps them (`ip -s xfrm state`): lifetime
    bytes/packets and `struct xfrm_stats`. A tuple, not a dataclass: a scrape of
    100,000 Child SAs makes 200,000 of them."""

    daddr: bytes  # xfrm_address_t (IPv4 in the first 4 bytes): with spi, the state's key
    spi: int
    reqid: int
    bytes: int
    packets: int
    replay_window: int  # dropped: too old for the replay window
    replay: int  # dropped: replayed (already seen)
    integrity_failed: int  # dropped: ICV check failed


_COUNTERS = struct.Struct("=16sI84xQQ16xIII4xI")  # from id_daddr through reqid
_COUNTERS_AT = _SA["id_daddr"]
assert _SA["reqid"] + 4 - _COUNTERS_AT == _COUNTERS.size
_ntohl = socket.ntohl


def scan_counters(data: bytes, offset: int) -> SaCounters:
    """The counters of a usersa_info starting at `offset` (a NEWSA dump message's
    payload, an EXPIRE's state, a DELSA's XFRMA_SA attribute). One unpack."""
    daddr, spi, nbytes, packets, window, replay, integrity, reqid = _COUNTERS.unpack_from(
        data, offset + _COUNTERS_AT
    )
    return SaCounters(daddr, _ntohl(spi), reqid, nbytes, packets, window, replay, integrity)
