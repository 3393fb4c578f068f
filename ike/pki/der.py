"""The few DER (ASN.1) elements IKE reads and writes: TLVs, tags, and their errors.

Every malformed element raises `AuthFailure` (the data comes from an AUTH payload or a
certificate the peer sent); nothing here knows what the elements mean.
"""

from __future__ import annotations

from ike.errors import AuthFailure

SEQUENCE, OID, NULL, INTEGER, SET = 0x30, 0x06, 0x05, 0x02, 0x31


def der(tag: int, body: bytes) -> bytes:
    """One DER element: tag, definite length, body."""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def tlv(data: bytes, off: int = 0) -> tuple[int, bytes, int]:
    """(tag, body, next offset) of one DER element; AuthFailure when it is cut short."""
    if off + 2 > len(data):
        raise AuthFailure("AUTH: truncated ASN.1")
    tag, n = data[off], data[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or off + k > len(data):
            raise AuthFailure("AUTH: bad ASN.1 length")
        n = int.from_bytes(data[off : off + k], "big")
        off += k
    if off + n > len(data):
        raise AuthFailure("AUTH: truncated ASN.1")
    return tag, data[off : off + n], off + n


def children(body: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) elements one after another in a constructed element's body."""
    out = []
    off = 0
    while off < len(body):
        tag, value, off = tlv(body, off)
        out.append((tag, value))
    return out
