"""The engine's error types (RFC 7296 words).

- DecodeError: the bytes are not a well-formed IKE message. The only exception the codec
  raises; the engine drops and counts such datagrams and never answers them.
- ProtocolError: a well-formed message the peer should not have sent. Carries the NOTIFY
  type that the engine turns into a NOTIFY at exactly one place (the request boundary).
- LocalError: our caller's misuse (unknown connection, bad proposal string...).
- AuthFailure: the peer's AUTH, certificate or identity does not verify (ike/auth.py,
  ike/pki/); the reason is for humans and never holds key material.
- ResponseIgnored: a response handler found the (authenticated) answer unusable, e.g. a
  REDIRECT without our nonce (RFC 5685): the request stays outstanding (retransmitted).
"""

from __future__ import annotations

from ike.constants import NotifyType


class DecodeError(Exception):
    """Malformed IKE message. `critical_payload` is set for an unknown critical payload."""

    def __init__(self, message: str, *, critical_payload: int | None = None) -> None:
        super().__init__(message)
        self.critical_payload = critical_payload


class ProtocolError(Exception):
    """The peer violated the protocol; answer (if it was a request) with `notify`."""

    def __init__(self, notify: NotifyType, message: str = "", data: bytes = b"") -> None:
        super().__init__(message or notify.name)
        self.notify = notify
        self.data = data


class LocalError(Exception):
    """Our caller asked for something impossible (bad config, unknown connection/SA)."""


class SpiExhausted(Exception):
    """An inbound SPI allocator has no SPI left (e.g. all counter slots are in use)."""


class ResponseIgnored(Exception):
    """Raised by a response handler: treat the response as never received."""


class AuthFailure(Exception):
    """The peer's authentication does not verify; str() is the reason (no secrets)."""
