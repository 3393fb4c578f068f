"""Identities and distinguished names (RFC 7296 §3.5, RFC 4945 §3.1), sans-IO.

DER Names to and from strongSwan's text (``C=CH, O=Example, CN=gw``), identity equality
with DNs compared by attribute (any string type, case-insensitive), and our default
identity from a certificate's subject.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from ike.constants import IdType
from ike.errors import AuthFailure, LocalError
from ike.pki.der import OID, SEQUENCE, SET, children, tlv

_DN_LABELS = {
    bytes.fromhex("550406"): "C",
    bytes.fromhex("550408"): "ST",
    bytes.fromhex("550407"): "L",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550403"): "CN",
    bytes.fromhex("550405"): "serialNumber",
    bytes.fromhex("2a864886f70d010901"): "E",
    bytes.fromhex("0992268993f22c640119"): "DC",
}
# attribute types by strongSwan's (upper-cased) names, beyond RFC 4514's own
_DN_TYPES = {
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "G": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
}
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (as strongSwan: bytes as Latin-1)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def _dn_attributes(der: bytes) -> tuple[tuple[bytes, str], ...] | None:
    """A DER Name as ((OID, value), ...) in order, or None when it is not one we read."""
    try:
        tag, body, end = tlv(der)
        if tag != SEQUENCE or end != len(der):
            return None
        out = []
        for set_tag, rdn in children(body):
            if set_tag != SET:
                return None
            for seq_tag, atv in children(rdn):
                parts = children(atv)
                if seq_tag != SEQUENCE or len(parts) != 2 or parts[0][0] != OID:
                    return None
                codec = _STRING_CODECS.get(parts[1][0])
                if codec is None:
                    return None
                out.append((parts[0][1], parts[1][1].decode(codec)))
        return tuple(out)
    except (AuthFailure, UnicodeDecodeError):
        return None


def same_identity(a: tuple[int, bytes], b: tuple[int, bytes]) -> bool:
    """IDs equal; two DNs compare by attribute types and values (case-insensitive, any
    string type), so PrintableString vs UTF8String encodings of one name match."""
    if a[0] != IdType.ID_DER_ASN1_DN or b[0] != IdType.ID_DER_ASN1_DN:
        return a == b
    da, db = _dn_attributes(a[1]), _dn_attributes(b[1])
    if da is None or db is None:
        return a[1] == b[1]
    return [(o, v.casefold()) for o, v in da] == [(o, v.casefold()) for o, v in db]


def dn_from_text(text: str) -> bytes:
    """strongSwan's DN syntax (``C=CH, O=Example, CN=gw``: most significant first, as in
    the certificate) -> the DER Name of an ID_DER_ASN1_DN. LocalError if unparseable."""
    parts = []
    for part in re.split(r"(?<!\\),", text):
        kind, eq, value = part.strip().partition("=")
        if not eq or not kind.strip() or not value.strip():
            raise LocalError(f"identity {text!r}: {part.strip()!r} is not TYPE=value")
        parts.append(f"{kind.strip().upper()}={value.strip()}")
    try:
        # RFC 4514 strings list the least significant RDN first: reverse strongSwan's order
        name = x509.Name.from_rfc4514_string(",".join(reversed(parts)), _DN_TYPES)
    except ValueError:
        raise LocalError(f"identity {text!r}: not a distinguished name we can read") from None
    return name.public_bytes()


def dn_to_text(der: bytes) -> str | None:
    """A DER Name in strongSwan's syntax, or None if it cannot be read."""
    attrs = _dn_attributes(der)
    if attrs is None:
        return None
    return ", ".join(
        f"{_DN_LABELS.get(o, _oid_text(o))}={v.replace(',', chr(92) + ',')}" for o, v in attrs
    )


def _oid_text(oid: bytes) -> str:
    arcs = [oid[0] // 40, oid[0] % 40] if oid else []
    n = 0
    for b in oid[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(n)
            n = 0
    return ".".join(map(str, arcs))


def subject_identity(cert: x509.Certificate) -> tuple[int, bytes]:
    """Our default identity with a certificate: its subject DN (strongSwan's default)."""
    if not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) and not len(cert.subject):
        raise LocalError("certs: the certificate has an empty subject; set an id")
    return IdType.ID_DER_ASN1_DN, cert.subject.public_bytes()


