"""What the modules of ike/ may ask of the engine: the small interfaces they are given.

The engine (ike/engine.py) composes leaf modules that never import it back (aioquic's
connection and its recovery/stream modules are the model). Each is handed the engine as
one of these Protocols and uses nothing else of it. IkeEngine implements them itself
(its own methods and components, so no extra call layer and no reference cycle); these
members are for the modules of ike/, not for the engine's callers (docs/ike.md lists
the API):

* ``SaHost``: MOBIKE (ike/mobike.py) and redirect (ike/redirect.py): the settings and
  counters, randomness, events, sending a request on an IKE SA, ending an IKE SA with a
  reason, deferring a step until the answer to the request being handled is sent, telling
  the engine that an SA's deadlines changed, and starting a new IKE SA (a redirect).
  An SA's addresses are read and changed on the ``IkeSa`` itself (ike/sa.py).
* ``ExchangeHost``: the exchange modules (IKE_SA_INIT, IKE_AUTH, Child SAs, IKE SA rekey)
  additionally reach the engine's tables (register an SA, find one by our SPI, move a
  handle to a rekeyed SA), the inbound SPI allocator, unprotected datagrams, and the
  timers of an SA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ike.codec import Payload
from ike.config import CompiledChild, CompiledConnection, EngineSettings
from ike.cookies import Cookies
from ike.events import Endpoint, Event
from ike.hooks import InboundSpiAllocator
from ike.sa import After, EndReason, IkeSa
from ike.stats import EngineStats
from ike.window import ResponseHandler, Wire


class SaHost(Protocol):
    """The engine as MOBIKE and redirect see it."""

    settings: EngineSettings
    stats: EngineStats

    def random(self, size: int) -> bytes:
        """`size` bytes from the injected random source (nonces, COOKIE2)."""
        ...

    def emit(self, event: Event) -> None:
        """Queue an event for the caller (next_event)."""
        ...

    def send_request(
        self,
        sa: IkeSa,
        exchange: int,
        payloads: list[Payload],
        on_response: ResponseHandler,
        now: float,
    ) -> None:
        """Encrypt and send a request on `sa` (queued behind the outstanding one, window
        size 1); `on_response(host, sa, msg, payloads, data, now)` gets the answer."""
        ...

    def end_sa(
        self,
        sa: IkeSa,
        reason: EndReason,
        now: float,
        *,
        after: After = After.REMOVE,
        detail: str = "",
        notify: str = "",
        conn: CompiledConnection | None = None,
    ) -> None:
        """The one way an IKE SA ends (ike/sa.py): events from `reason`, then `after`."""
        ...

    def after_response(self, step: Callable[[], None]) -> None:
        """Run `step` once the answer to the request being handled has been sent."""
        ...

    def lifetimes_changed(self, sa: IkeSa) -> None:
        """An SA's deadlines (keepalive, rekey, DPD...) changed: fold them again."""
        ...

    def start_initiator(
        self,
        conn: CompiledConnection,
        child: CompiledChild,
        local: Endpoint,
        remote: Endpoint,
        now: float,
        *,
        redirected_from: tuple[str, tuple[float, ...]] | None = None,
    ) -> IkeSa:
        """A new IKE SA of ours to `remote`, its IKE_SA_INIT sent."""
        ...


class ExchangeHost(SaHost, Protocol):
    """The engine as the exchange modules see it."""

    spis: InboundSpiAllocator
    cookies: Cookies[IkeSa]

    def send_datagram(self, local: Endpoint, remote: Endpoint, data: Wire) -> None:
        """Send bytes as they are (the non-ESP marker is added on the NAT-T port)."""
        ...

    def send_first(self, sa: IkeSa, data: bytes, on_response: ResponseHandler, now: float) -> None:
        """Send our unprotected IKE_SA_INIT request (message ID 0), retransmitted."""
        ...

    def send_queued(self, sa: IkeSa, now: float) -> None:
        """Send the next queued request of `sa` if none is outstanding."""
        ...

    def new_uid(self) -> int:
        """A handle no IKE SA has had (for a new IKE SA)."""
        ...

    def send_ike_delete(self, sa: IkeSa, now: float) -> None:
        """Our INFORMATIONAL Delete(IKE) of `sa` (DELETING); end_sa follows the answer."""
        ...

    def new_ike_spi(self) -> bytes:
        """An IKE SPI of ours that no SA uses."""
        ...

    def find_sa(self, spi: bytes) -> IkeSa | None:
        """The IKE SA with our SPI `spi`, if any."""
        ...

    def add_sa(self, sa: IkeSa) -> None:
        """Put a new IKE SA in the tables (by our SPI and by its handle)."""
        ...

    def swap_handles(self, old: IkeSa, new: IkeSa) -> None:
        """`new` takes over `old`'s handle (uid) and `old` gets `new`'s (an IKE rekey)."""
        ...

    def set_expiry(self, sa: IkeSa, at: float | None) -> None:
        """When `sa` ends unless something happens first (half-open, lingering)."""
        ...

    def connections_for(self, local: Endpoint, remote: Endpoint) -> tuple[CompiledConnection, ...]:
        """The connections whose addresses allow this pair of endpoints."""
        ...
