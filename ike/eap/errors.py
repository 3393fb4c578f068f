"""EAP error types, in the engine's split (ike/errors.py):

- EapDecodeError: the bytes are not a well-formed EAP packet or method message.
- EapFailure: the conversation cannot succeed (wrong password, untrusted certificate,
  unexpected message); `str()` is a reason for humans and never holds a secret.
"""

from __future__ import annotations


class EapError(Exception):
    pass


class EapDecodeError(EapError):
    """Malformed EAP packet or method data."""


class EapFailure(EapError):
    """The authentication failed; the reason names what, never key material."""
