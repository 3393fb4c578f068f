"""`keyingtries`: the feature manager that retries an initiation of ours that failed
(docs/daemon.md, "Initiation retries").

An attempt (start_action, `ctl initiate`, dpd_action restart, close_action start) is
tracked from its initiation to its outcome. When it fails, the connection is initiated
again after a backoff (RETRY_FIRST doubling to RETRY_CAP, each delay shortened by a
random part of up to RETRY_JITTER), unless its keyingtries are used up (0 = forever).
One pending retry per connection; an IKE SA of the connection coming up (either side
began it), `terminate`, a reload that removes or changes the connection, and shutdown
each cancel it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, Final

from gateway.control.protocol import ControlError
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.records import Attempt
from ike import events as ev

if TYPE_CHECKING:
    from gateway.config.schema import ConnectionSection

RETRY_FIRST: Final = 1.0
RETRY_CAP: Final = 60.0
RETRY_JITTER: Final = 0.2


class Retries(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.in_flight: dict[int, Attempt] = {}  # ike_sa -> our initiation it is
        self.pending: dict[str, asyncio.TimerHandle] = {}  # connection -> its next attempt
        self.delays = (RETRY_FIRST, RETRY_CAP)  # (first, cap); tests shorten them

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.IkeSaEstablished():
                self.in_flight.pop(event.ike_sa, None)  # this initiation succeeded
                self.cancel_pending(event.connection)  # the connection is up
            case ev.IkeSaRedirected(initiator=True):
                attempt = self.in_flight.pop(event.ike_sa, None)
                if attempt is not None:  # the same attempt goes on elsewhere: not a retry
                    self.in_flight[event.new_ike_sa] = attempt
            case ev.IkeSaDeleted():
                self.in_flight.pop(event.ike_sa, None)
            case ev.IkeSaFailed():
                attempt = self.in_flight.pop(event.ike_sa, None)
                follow = self.d.actions.take_follow(event.ike_sa)
                if attempt is not None:
                    if follow:  # a retry brings them along
                        attempt = Attempt(
                            attempt.connection,
                            attempt.child,
                            attempt.attempt,
                            attempt.more + follow,
                        )
                    self.schedule(attempt, event.reason)

    def track(self, ike_sa: int, attempt: Attempt) -> None:
        self.in_flight[ike_sa] = attempt

    def schedule(self, failed: Attempt, reason: str) -> None:
        """An initiation of ours failed: try the connection again after a backoff,
        unless its keyingtries are used up."""
        conn = self.d.config.connection(failed.connection)
        if conn is None or self.d.loop is None or self.d.closing:
            return
        if conn.keyingtries and failed.attempt >= conn.keyingtries:
            if conn.keyingtries > 1:
                self.d.report(
                    "ike-retry-exhausted",
                    logging.WARNING,
                    connection=conn.name,
                    attempts=failed.attempt,
                    reason=reason,
                )
            return
        first, cap = self.delays
        delay = min(cap, first * 2.0 ** min(failed.attempt - 1, 30))
        delay *= 1.0 - RETRY_JITTER * random.random()  # timing jitter, not crypto
        self.cancel_pending(conn.name)
        nxt = Attempt(conn.name, failed.child, failed.attempt + 1, failed.more)
        self.pending[conn.name] = self.d.loop.call_later(delay, self.retry, conn, nxt)
        self.d.report(
            "ike-retry-scheduled",
            connection=conn.name,
            child=nxt.child,
            attempt=nxt.attempt,
            keyingtries=conn.keyingtries,
            delay=f"{delay:.2f}",
            reason=reason,
        )

    def retry(self, conn: ConnectionSection, attempt: Attempt) -> None:
        """The next attempt (from its timer)."""
        self.pending.pop(conn.name, None)
        if self.d.closing or self.d.config.connection(conn.name) != conn:
            return  # stopped, or removed/changed by a reload (which starts it anew)
        if any(r.state == "ESTABLISHED" for r in self.d.sas.of(conn.name)):
            return  # the peer brought it up meanwhile
        try:
            ike_sa = self.d.actions.initiate(conn, attempt.child, attempt.attempt)
            if attempt.more:
                self.d.actions.follow[ike_sa] = attempt.more
        except ControlError as exc:  # e.g. no usable local address yet: counts as failed
            self.d.report("ike-retry-failed", logging.ERROR, connection=conn.name, error=exc)
            self.schedule(attempt, str(exc))
            return
        self.d.report(
            "ike-retry",
            connection=conn.name,
            child=attempt.child,
            attempt=attempt.attempt,
            keyingtries=conn.keyingtries,
            ike_sa=ike_sa,
        )
        self.d.pump()

    def cancel_pending(self, connection: str) -> bool:
        handle = self.pending.pop(connection, None)
        if handle is not None:
            handle.cancel()
        return handle is not None

    def cancel(self, connection: str) -> bool:
        """No more retries for this connection: its pending one is cancelled and its
        attempts in flight will not be retried. True when a retry was pending."""
        for ike_sa, attempt in list(self.in_flight.items()):
            if attempt.connection == connection:
                del self.in_flight[ike_sa]
        return self.cancel_pending(connection)

    def stop(self) -> None:
        for name in list(self.pending):
            self.cancel(name)
        self.in_flight.clear()
