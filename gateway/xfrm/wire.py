"""Fast encoders for the messages the manager sends in bulk.

The pyroute2 classes in gateway.xfrm.netlink describe every XFRM message and decode
everything the kernel sends; encoding through them costs tens of microseconds per
message. Installing thousands of Child SAs is dominated by that cost, so the hot
requests (NEWSA/UPDSA, NEWPOLICY/UPDPOLICY, DELSA, DELPOLICY, GETSA) are packed here
with precompiled struct.Struct objects of the same layouts. tests/unit/test_xfrm_wire.py
proves each one byte-identical to the pyroute2 encoding of the same values.

'=' formats: standard sizes, no implicit alignment (padding is explicit, as in the
pyroute2 field lists). Big-endian fields (ports, SPI) are byte-swapped before packing.
"""

from __future__ import annotations

import socket
import struct
from functools import lru_cache

from gateway.xfrm import netlink as nl

HEADER = struct.Struct("=IHHII")
NLA_HEADER = struct.Struct("=HH")
SELECTOR_FMT = "16s16sHHHHHBBB3xiI"
LIFETIME_CFG_FMT = "8Q"
LIFETIME_CUR_FMT = "4Q"
USERSA_INFO = struct.Struct(
    "=" + SELECTOR_FMT + "16sIB3x" + "16s" + LIFETIME_CFG_FMT + LIFETIME_CUR_FMT + "3I" + "IIHBBB7x"
)
USERSA_ID = struct.Struct("=16sIHBx")
AEVENT_ID = struct.Struct("=16sIHBx16sII")
USERPOLICY_INFO = struct.Struct(
    "=" + SELECTOR_FMT + LIFETIME_CFG_FMT + LIFETIME_CUR_FMT + "IIBBBB4x"
)
USERPOLICY_ID = struct.Struct("=" + SELECTOR_FMT + "IB3x")
USER_TMPL = struct.Struct("=16sIB3xH2x16sIBBBxIII")
ENCAP_TMPL = struct.Struct("=HHH2x16s")
ALGO = struct.Struct("=64sI")
ALGO_AUTH = struct.Struct("=64sII")
ALGO_AEAD = struct.Struct("=64sII")
REPLAY_ESN = struct.Struct("=6I")
MARK = struct.Struct("=II")
USER_OFFLOAD = struct.Struct("=iB3x")
U32 = struct.Struct("=I")
U8 = struct.Struct("=B3x")  # a u8 attribute padded to 4 bytes

_htons = socket.htons
_htonl = socket.htonl

Selector = tuple[bytes, bytes, int, int, int, int, int, int, int, int, int, int]
"""(daddr, saddr, dport, dport_mask, sport, sport_mask, family, plen_d, plen_s, proto,
ifindex, user) in host order; pack_selector() swaps the ports."""

ANY_SELECTOR: Selector = (b"", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def nla(attr_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return NLA_HEADER.pack(length, attr_type) + payload + bytes(-length % 4)


def header(length: int, msg_type: int, flags: int, seq: int) -> bytes:
    return HEADER.pack(length, msg_type, flags, seq, 0)


def selector_values(sel: Selector) -> tuple[object, ...]:
    d, s, dport, dmask, sport, smask, fam, pd, ps, proto, ifindex, user = sel
    if dport or dmask or sport or smask:
        dport, dmask, sport, smask = _htons(dport), _htons(dmask), _htons(sport), _htons(smask)
    return (d, s, dport, dmask, sport, smask, fam, pd, ps, proto, ifindex, user)


def message(msg_type: int, flags: int, seq: int, body: bytes, attrs: bytes = b"") -> bytes:
    return header(16 + len(body) + len(attrs), msg_type, flags, seq) + body + attrs


def usersa_info(
    *,
    sel: Selector,
    daddr: bytes,
    spi: int,
    proto: int,
    saddr: bytes,
    lifetime: tuple[int, ...],
    reqid: int,
    family: int,
    mode: int,
    replay_window: int,
    flags: int,
) -> bytes:
    return USERSA_INFO.pack(
        *selector_values(sel),
        daddr,
        _htonl(spi),
        proto,
        saddr,
        *lifetime,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        reqid,
        family,
        mode,
        replay_window,
        flags,
    )


def usersa_id(daddr: bytes, spi: int, family: int, proto: int) -> bytes:
    return USERSA_ID.pack(daddr, _htonl(spi), family, proto)


def aevent_id(
    daddr: bytes, spi: int, family: int, proto: int, saddr: bytes, flags: int, reqid: int
) -> bytes:
    return AEVENT_ID.pack(daddr, _htonl(spi), family, proto, saddr, flags, reqid)


def userpolicy_info(
    *,
    sel: Selector,
    priority: int,
    index: int,
    direction: int,
    action: int = 0,
    flags: int = 0,
    share: int = 0,
    lifetime: tuple[int, ...] = (nl.XFRM_INF,) * 4 + (0,) * 4,
) -> bytes:
    return USERPOLICY_INFO.pack(
        *selector_values(sel),
        *lifetime,
        0,
        0,
        0,
        0,
        priority,
        index,
        direction,
        action,
        flags,
        share,
    )


def userpolicy_id(sel: Selector, index: int, direction: int) -> bytes:
    return USERPOLICY_ID.pack(*selector_values(sel), index, direction)


def user_tmpl(
    *,
    daddr: bytes,
    spi: int,
    proto: int,
    family: int,
    saddr: bytes,
    reqid: int,
    mode: int,
    share: int = 0,
    optional: int = 0,
    aalgos: int = 0xFFFFFFFF,
    ealgos: int = 0xFFFFFFFF,
    calgos: int = 0xFFFFFFFF,
) -> bytes:
    return USER_TMPL.pack(
        daddr,
        _htonl(spi),
        proto,
        family,
        saddr,
        reqid,
        mode,
        share,
        optional,
        aalgos,
        ealgos,
        calgos,
    )


def encap_tmpl(encap_type: int, sport: int, dport: int, oa: bytes = b"") -> bytes:
    return ENCAP_TMPL.pack(encap_type, _htons(sport), _htons(dport), oa)


def algo(name: str, key: bytes) -> bytes:
    return ALGO.pack(name.encode(), len(key) * 8) + key


def algo_auth(name: str, key: bytes, trunc_bits: int) -> bytes:
    return ALGO_AUTH.pack(name.encode(), len(key) * 8, trunc_bits) + key


def algo_aead(name: str, key: bytes, icv_bits: int) -> bytes:
    return ALGO_AEAD.pack(name.encode(), len(key) * 8, icv_bits) + key


@lru_cache(maxsize=64)
def _empty_replay_esn(window: int) -> bytes:
    words = (window + 31) // 32
    return REPLAY_ESN.pack(words, 0, 0, 0, 0, window) + bytes(4 * words)


def replay_esn(
    window: int,
    oseq: int = 0,
    seq: int = 0,
    oseq_hi: int = 0,
    seq_hi: int = 0,
    bmp: tuple[int, ...] = (),
) -> bytes:
    if not (oseq or seq or oseq_hi or seq_hi or bmp):
        return _empty_replay_esn(window)
    words = (window + 31) // 32
    bitmap = tuple(bmp[:words]) + (0,) * (words - len(bmp[:words]))
    return REPLAY_ESN.pack(words, oseq, seq, oseq_hi, seq_hi, window) + struct.pack(
        f"={words}I", *bitmap
    )


def mark(value: int, mask: int) -> bytes:
    return MARK.pack(value, mask)


def user_offload(ifindex: int, flags: int) -> bytes:
    return USER_OFFLOAD.pack(ifindex, flags)


def u32(value: int) -> bytes:
    return U32.pack(value)


def u8(value: int) -> bytes:
    return U8.pack(value)[:1]
