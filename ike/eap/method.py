"""What an EAP method looks like to the conversation (ike/eap/session.py).

A method sees only its Type-Data (RFC 3748 §4: the bytes after the Type octet):

- the authenticator's side (`ServerMethod`): `start()` gives the first Request's
  Type-Data; `process(response)` gives the next Request's Type-Data, or `Done` when the
  method has finished (then `msk` is set on success); `failure_pending` says why the
  peer failed while the method still waits for it to acknowledge that;
- the peer's side (`PeerMethod`): `process(request)` gives the Response's Type-Data, or
  raises EapFailure when the peer must give up. `succeeded` turns True once the method
  reached a state in which an EAP-Success is acceptable (RFC 3748 §4.2: a peer does not
  take Success from an authenticator that has not proved itself), and `msk` is then set.

Randomness comes from an injected source (default os.urandom): tests are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

RandomSource = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Done:
    """The method has finished; `reason` says why it failed (never a secret)."""

    success: bool
    reason: str = ""


class ServerMethod(Protocol):
    @property
    def type(self) -> int: ...

    @property
    def msk(self) -> bytes | None: ...

    @property
    def failure_pending(self) -> str | None:
        """Why the peer failed, once the method has decided so but still waits for the
        peer's acknowledgement (an MS-CHAPv2 Failure, a TLS alert); else None."""
        ...

    def start(self) -> bytes: ...

    def process(self, data: bytes) -> bytes | Done: ...


class PeerMethod(Protocol):
    @property
    def type(self) -> int: ...

    @property
    def msk(self) -> bytes | None: ...

    @property
    def succeeded(self) -> bool: ...

    @property
    def failure(self) -> str | None: ...

    def process(self, data: bytes) -> bytes: ...
