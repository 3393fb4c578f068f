"""Actions: the feature manager that brings Child SAs up and down, on its own (start,
close and DPD actions) and when asked (`initiate`, `terminate`, `rekey`, `redirect`).

    start_action = "start"  at start-up and for added/changed connections on reload:
                            every such Child of a connection on one IKE SA (the first
                            rides in IKE_AUTH, the rest follow once it is up)
    close_action = "start"  the peer closed the Child (alone or with its IKE SA): up again
    dpd_action = "restart"  the peer was found dead: initiated again with the first such
                            Child
    (the "trap" variants are gateway/daemon/traps.py's, retries gateway/daemon/retries.py)

The control commands wait for their outcome: each registers a waiter with the core that
the matching engine event resolves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.control.protocol import (
    BAD_REQUEST,
    FAILED,
    UNKNOWN_CONNECTION,
    UNKNOWN_SA,
    ControlError,
)
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.records import Attempt
from ike import events as ev
from ike.errors import LocalError

if TYPE_CHECKING:
    from gateway.config.schema import ConnectionSection


class Actions(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        # IKE SAs we are setting up -> further Children to request once each is up
        self.follow: dict[int, tuple[str, ...]] = {}

    async def start(self) -> None:
        for conn in self.d.config.connections:
            self.start_actions(conn)

    def stop(self) -> None:
        self.follow.clear()

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.IkeSaEstablished():
                follow = self.follow.pop(event.ike_sa, ())
                if follow:  # after this batch, which has the first Child
                    self.d.soon(self._follow_up, event.ike_sa, event.connection, follow)
            case ev.IkeSaRedirected(initiator=True):
                follow = self.follow.pop(event.ike_sa, ())
                if follow:
                    self.follow[event.new_ike_sa] = follow
            case ev.IkeSaDeleted() | ev.IkeSaFailed():
                self.follow.pop(event.ike_sa, None)
            case ev.DpdFailed():
                self._dpd_restart(event)

    def take_follow(self, ike_sa: int) -> tuple[str, ...]:
        """The Children that were to follow on this IKE SA (its attempt failed)."""
        return self.follow.pop(ike_sa, ())

    # ------------------------------------------------------------------ on their own

    def start_actions(self, conn: ConnectionSection) -> None:
        if not self.d.start_filter(conn.name):
            return
        children = [c.name for c in conn.children if c.start_action == "start"]
        if not children:
            return
        try:
            self.bring_up(conn, children)
        except (ControlError, LocalError) as exc:
            self.d.report(
                "start-action-failed",
                logging.ERROR,
                connection=conn.name,
                child=children[0],
                error=exc,
            )

    def bring_up(self, conn: ConnectionSection, children: Sequence[str]) -> None:
        """These Children of `conn` up, all on one IKE SA: requested over an established
        IKE SA of the connection, after the one we are setting up, or with a new IKE SA
        whose IKE_AUTH carries the first (keyingtries covers it) and the rest after."""
        records = self.d.sas.of(conn.name)
        up = next((r for r in records if r.state == "ESTABLISHED"), None)
        if up is not None:
            self._request_children(up.ike_sa, conn.name, tuple(children))
            return
        coming = next((r for r in records if r.state == "CONNECTING" and r.initiator), None)
        if coming is not None:
            self.follow[coming.ike_sa] = self.follow.get(coming.ike_sa, ()) + tuple(children)
            return
        ike_sa = self.initiate(conn, children[0])
        if children[1:]:
            self.follow[ike_sa] = tuple(children[1:])

    def _request_children(self, ike_sa: int, connection: str, children: Sequence[str]) -> None:
        """CREATE_CHILD_SA for each of these Children the IKE SA does not carry yet."""
        record = self.d.sas.get(ike_sa)
        conn = self.d.config.connection(connection)
        if record is None or record.state != "ESTABLISHED" or conn is None:
            return  # gone or removed meanwhile (its retry or reload starts it anew)
        have = {c.name for c in record.children}
        for child in dict.fromkeys(children):
            if child in have or conn.child(child) is None:
                continue
            try:
                self.d.engine.create_child_sa(ike_sa, child, self.d.clock(), packet_ts=None)
                self.d.report("create-child", connection=connection, child=child, ike_sa=ike_sa)
            except LocalError as exc:
                self.d.report(
                    "create-child-failed",
                    logging.ERROR,
                    connection=connection,
                    child=child,
                    error=exc,
                )

    def _follow_up(self, ike_sa: int, connection: str, children: Sequence[str]) -> None:
        self._request_children(ike_sa, connection, children)
        self.d.pump()

    def restart_closed(self, conn: ConnectionSection, child: str) -> None:
        """close_action "start": the peer closed this Child (alone or with its IKE SA);
        once the current event batch is handled (an IKE SA going down goes first), bring
        it up again."""
        if self.d.loop is None or self.d.closing:
            return
        self.d.report("close-restart", connection=conn.name, child=child)

        def restart() -> None:
            if self.d.closing or self.d.config.connection(conn.name) != conn:
                return  # stopped, or removed/changed by a reload
            try:
                self.bring_up(conn, [child])
            except (ControlError, LocalError) as exc:
                self.d.report(
                    "close-restart-failed", logging.ERROR, connection=conn.name, error=exc
                )
            self.d.pump()

        self.d.soon(restart)

    def _dpd_restart(self, e: ev.DpdFailed) -> None:
        """dpd_action "restart": initiate the connection again, once, with the first
        such Child (its first Child rides in IKE_AUTH, as with start_action)."""
        conn = self.d.config.connection(e.connection)
        restart = [child for child, action in e.actions if action == "restart"]
        if conn is None or not restart or conn.child(restart[0]) is None:
            return  # removed or changed by a reload meanwhile: nothing to restart
        self.d.report("dpd-restart", connection=conn.name, child=restart[0])
        try:
            self.initiate(conn, restart[0])
        except ControlError as exc:
            self.d.report("dpd-restart-failed", logging.ERROR, connection=conn.name, error=exc)

    def initiate(self, conn: ConnectionSection, child: str | None, attempt: int = 1) -> int:
        """Initiate an IKE SA (with `child` in IKE_AUTH); keyingtries retries it when it
        fails. A first attempt replaces the connection's pending retry."""
        if attempt == 1:
            self.d.retries.cancel_pending(conn.name)
        ike_sa = int(self.d.engine_call(self.d.engine.initiate, conn.name, child))
        self.d.sas.ensure(ike_sa, conn.name, True)
        self.d.retries.track(ike_sa, Attempt(conn.name, child, attempt))
        self.d.report("initiate", connection=conn.name, child=child, ike_sa=ike_sa)
        return ike_sa

    # ------------------------------------------------------------------ when asked

    def resolve(self, name: str) -> tuple[ConnectionSection, str | None]:
        """`conn` or `conn.child` of a control request -> (connection, child or None)."""
        conn_name, _, child_name = name.partition(".")
        conn = self.d.config.connection(conn_name)
        if conn is None:
            raise ControlError(UNKNOWN_CONNECTION, f"no connection named {conn_name!r}")
        if child_name and conn.child(child_name) is None:
            raise ControlError(
                UNKNOWN_CONNECTION, f"connection {conn_name!r} has no child {child_name!r}"
            )
        return conn, child_name or None

    async def initiate_command(self, name: str, timeout: float) -> Any:
        conn, child = self.resolve(name)
        ike_sa = self.initiate(conn, child)
        want_child = child or (conn.children[0].name if conn.children else None)

        def match(event: Any) -> str | None:
            nonlocal ike_sa
            if isinstance(event, ev.IkeSaFailed) and event.ike_sa == ike_sa:
                return event.reason
            if getattr(event, "ike_sa", None) != ike_sa:
                return None
            if isinstance(event, ev.IkeSaRedirected) and event.initiator:
                ike_sa = event.new_ike_sa  # a gateway sent us elsewhere: wait for that one
                return None
            if isinstance(event, ev.ChildSaEstablished) and event.child == want_child:
                return ""
            if isinstance(event, ev.ChildSaFailed) and event.child == want_child:
                return f"Child SA {event.child} failed: {event.reason}"
            if isinstance(event, ev.IkeSaEstablished) and want_child is None:
                return ""
            if isinstance(event, ev.IkeSaDeleted):
                return event.reason
            return None

        future = self.d.wait(match)
        self.d.pump()
        await self.d.outcome(future, timeout, f"initiate {name}")
        record = self.d.sas.get(ike_sa)  # the last attempt's handle (after redirects)
        return {
            "message": f"initiate {name}: established",
            "sa": self.d.sa_row(record) if record else None,
        }

    async def terminate_command(self, name: str, timeout: float) -> Any:
        conn, child = self.resolve(name)
        records = self.d.sas.of(conn.name)
        if self.d.retries.cancel(conn.name) and not records:
            self.d.report("ike-retry-cancelled", connection=conn.name, reason="terminate")
            return {"message": f"terminate {name}: pending initiation retry cancelled"}
        if child is None:
            if not records:
                raise ControlError(UNKNOWN_SA, f"connection {conn.name!r} has no IKE SA")
            targets = {r.ike_sa for r in records}
            pending = set(targets)

            def match(event: Any) -> str | None:
                if isinstance(event, ev.IkeSaDeleted | ev.IkeSaFailed):
                    pending.discard(event.ike_sa)
                    return "" if not pending else None
                return None

            future = self.d.wait(match)
            for record in records:
                self.d.engine_call(self.d.engine.delete_ike_sa, record.ike_sa)
                record.state = "DELETING"
            self.d.pump()
            await self.d.outcome(future, timeout, f"terminate {name}")
            return {"message": f"terminate {name}: {len(targets)} IKE SA(s) deleted"}
        children = [(r, c) for r in records for c in r.children if c.name == child]
        if not children:
            raise ControlError(UNKNOWN_SA, f"{name} has no installed Child SA")
        spis = {c.spi_in for _, c in children}

        def match_child(event: Any) -> str | None:
            if isinstance(event, ev.ChildSaDeleted):
                spis.discard(event.spi_in)
                return "" if not spis else None
            return None

        future = self.d.wait(match_child)
        for record, c in children:
            c.state = "DELETING"
            self.d.engine_call(self.d.engine.delete_child_sa, record.ike_sa, c.spi_in)
        self.d.pump()
        await self.d.outcome(future, timeout, f"terminate {name}")
        return {"message": f"terminate {name}: {len(children)} Child SA(s) deleted"}

    async def rekey_command(self, name: str, timeout: float) -> Any:
        """`conn`: rekey its IKE SAs; `conn.child`: rekey those Child SAs. Waits until
        every one is rekeyed (or fails)."""
        conn, child = self.resolve(name)
        records = self.d.sas.of(conn.name)
        targets: list[tuple[int, int | None]]
        if child is None:
            targets = [(r.ike_sa, None) for r in records if r.state == "ESTABLISHED"]
        else:
            targets = [
                (r.ike_sa, c.spi_in)
                for r in records
                if r.state == "ESTABLISHED"
                for c in r.children
                if c.name == child and c.state == "INSTALLED"
            ]
        if not targets:
            raise ControlError(UNKNOWN_SA, f"{name} has no established SA to rekey")
        ike_pending = {ike_sa for ike_sa, spi in targets if spi is None}
        child_pending = {spi for _, spi in targets if spi is not None}

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaRekeyed):
                ike_pending.discard(event.ike_sa)
            elif isinstance(event, ev.ChildSaRekeyed):
                child_pending.discard(event.old_spi_in)
            elif isinstance(event, ev.IkeSaDeleted) and event.ike_sa in {t[0] for t in targets}:
                return f"IKE SA deleted: {event.reason}"
            elif isinstance(event, ev.ChildSaDeleted) and event.spi_in in child_pending:
                return f"Child SA deleted: {event.reason}"
            elif isinstance(event, ev.ChildSaFailed) and child_pending and event.child == child:
                return f"rekey failed: {event.reason}"
            return "" if not ike_pending and not child_pending else None

        future = self.d.wait(match)
        for ike_sa, spi_in in targets:
            if spi_in is None:
                self.d.engine_call(self.d.engine.rekey_ike_sa, ike_sa)
            else:
                self.d.engine_call(self.d.engine.rekey_child_sa, ike_sa, spi_in)
        self.d.pump()
        await self.d.outcome(future, timeout, f"rekey {name}")
        what = "IKE SA(s)" if child is None else "Child SA(s)"
        return {"message": f"rekey {name}: {len(targets)} {what} rekeyed"}

    async def redirect_command(self, name: str, to: str, timeout: float) -> Any:
        """Send the peers of a connection's established IKE SAs to gateway `to` (RFC 5685
        §5; e.g. to drain this gateway). Waits until each peer has answered."""
        from ike.config import check_gateway

        conn, child = self.resolve(name)
        if child is not None:
            raise ControlError(BAD_REQUEST, "redirect moves IKE SAs: name a connection")
        try:
            gateway = check_gateway(to)
        except LocalError as exc:
            raise ControlError(BAD_REQUEST, f"redirect: {exc}") from None
        records = [r for r in self.d.sas.of(conn.name) if r.state == "ESTABLISHED"]
        if not records:
            raise ControlError(UNKNOWN_SA, f"{name} has no established IKE SA to redirect")
        pending: set[int] = set()
        refused: list[str] = []

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaRedirected | ev.IkeSaDeleted):
                pending.discard(event.ike_sa)
            return "" if not pending else None

        future = self.d.wait(match)
        for record in records:
            try:
                self.d.engine_call(self.d.engine.redirect_ike_sa, record.ike_sa, gateway)
            except ControlError as exc:
                refused.append(exc.message)
            else:
                pending.add(record.ike_sa)
        sent = len(pending)
        if not sent:
            self.d.unwait(future)
            raise ControlError(FAILED, f"redirect {name}: " + "; ".join(refused))
        self.d.pump()
        await self.d.outcome(future, timeout, f"redirect {name}")
        message = f"redirect {name}: {sent} IKE SA(s) sent to {gateway}"
        if refused:
            message += f"; not redirected: {'; '.join(refused)}"
        return {"message": message}
