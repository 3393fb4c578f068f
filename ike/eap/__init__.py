"""EAP (RFC 3748) for IKEv2 (RFC 7296 §2.16), sans-IO: the packet codec, the conversation
on either side (session.py) and the methods EAP-MSCHAPv2 (mschapv2.py) and EAP-TLS
(tls.py). Nothing here does I/O or reads a clock: time arrives as an argument, randomness
from an injected source.
"""

from ike.eap.errors import EapDecodeError, EapError, EapFailure
from ike.eap.packet import Code, EapPacket, EapType, decode_eap, encode_eap
from ike.eap.session import EapAuthenticator, EapPeer, Status

__all__ = [
    "Code",
    "EapAuthenticator",
    "EapDecodeError",
    "EapError",
    "EapFailure",
    "EapPacket",
    "EapPeer",
    "EapType",
    "Status",
    "decode_eap",
    "encode_eap",
]
