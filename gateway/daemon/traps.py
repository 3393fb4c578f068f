"""Trap policies (`start_action = "trap"`, and `dpd_action`/`close_action = "trap"` after a
dead peer / a close by the peer): the feature manager that keeps them installed and turns
the kernel's ACQUIRE into an initiation (RFC 4301 §4.4; docs/daemon.md "Trap policies").

Traps live in the data plane under their own reqid; the Child SAs of a trapped Child
config are installed under the trap's reqid, so the trap stays underneath when they go.
`sync()` makes the installed traps what the configuration and those actions want;
`fall_back_to_trap(conn, children, reason)` is how an action puts Children into the trap
state. Each trap's state machine is gateway/daemon/trap_table.py (pure: it says what to
do, this module does it).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.config.schema import concrete
from gateway.control.protocol import ControlError
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.report import Logged, Published
from gateway.daemon.trap_table import TrapTable
from gateway.dataplane.base import DataplaneError, TrapKey, TrapSpec
from ike import events as ev
from ike.errors import LocalError
from ike.sa import ChildEndReason, EndReason
from ike.ts import ts_for_address

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection, ConnectionSection


class Traps(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.table = TrapTable()  # installed trap policies and their state machines
        self._armed: set[TrapKey] = set()  # dpd_action/close_action "trap" happened
        self._wanted: tuple[Any, dict[TrapKey, TrapSpec]] | None = None

    async def start(self) -> None:
        self.sync()

    def stop(self) -> None:
        for trap in self.table.all():  # after the SAs that shared their policies
            self._remove(trap.spec.key)

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: Any, ctx: EventContext) -> None:
        now = self.d.clock()
        match event:
            case ev.IkeSaEstablished() if ctx.state in (None, "CONNECTING"):
                # traps whose ACQUIRE came while this IKE SA was being set up: their Child
                # follows once this event batch (with the first Child) is handled
                self.d.soon(self._children_after_ike, event.ike_sa)
            case ev.ChildSaEstablished():
                self.table.established((event.connection, event.child))
            case ev.ChildSaRekeyed():
                self.table.established((event.connection, event.child))
            case ev.ChildSaFailed():
                self.table.failed((event.connection, event.child), now)
            case ev.ChildSaDeleted() if not self.d.children.retiring(event.spi_in):
                by_peer = event.reason == ChildEndReason.DELETED_BY_PEER.value
                self._child_gone(event.connection, event.child, by_peer)
            case ev.IkeSaDeleted():
                for child in ctx.children:  # normally gone already with ChildSaDeleted
                    self._child_gone(event.connection, child.name, False)
                self.table.ike_sa_gone(event.ike_sa, now)
                conn = self.d.config.connection(event.connection)
                if event.reason == EndReason.DELETED_BY_PEER.value and conn is not None:
                    closing = [c for c in conn.children if c.close_action == "trap"]
                    self.fall_back_to_trap(conn, closing, "closed by peer")
                self.sync()  # e.g. a removed connection's trap waited for its SAs
            case ev.IkeSaFailed():
                self.table.ike_sa_gone(event.ike_sa, now)
            case ev.DpdFailed():
                conn = self.d.config.connection(event.connection)
                if conn is not None:  # dpd_action = "trap": back to the trap state
                    trap = [conn.child(c) for c, action in event.actions if action == "trap"]
                    self.fall_back_to_trap(conn, [c for c in trap if c is not None], "dead peer")

    def _child_gone(self, connection: str, child: str, by_peer: bool) -> None:
        """A Child SA went: with none of that Child config left, its trap waits for
        traffic again; close_action "trap" arms one when the peer closed it."""
        key = (connection, child)
        if self.d.sas.has_child(connection, child):
            return
        self.table.down(key)
        conn = self.d.config.connection(connection)
        config = conn.child(child) if conn is not None else None
        if by_peer and conn is not None and config is not None and config.close_action == "trap":
            self.fall_back_to_trap(conn, [config], "closed by peer")
        else:
            self.sync()
        if by_peer and conn is not None and config is not None and config.close_action == "start":
            self.d.actions.restart_closed(conn, child)

    # ------------------------------------------------------------------ installed traps

    def fall_back_to_trap(
        self, conn: ConnectionSection, children: Sequence[ChildSection], reason: str
    ) -> None:
        """dpd_action / close_action "trap": these Children get trap policies (if they
        have none yet), so the next packet for them brings them back (`acquired`)."""
        for child in children:
            key = (conn.name, child.name)
            if key not in self._armed and child.start_action != "trap":
                self.d.report(
                    "trap-armed", connection=conn.name, child=child.name, reason=repr(reason)
                )
                self._armed.add(key)
        self.sync()

    def forget(self, connections: Iterable[str]) -> None:
        """Removed or changed connections (reload): their armed traps are forgotten."""
        gone = set(connections)
        self._armed = {k for k in self._armed if k[0] not in gone}

    def _wanted_traps(self) -> dict[TrapKey, TrapSpec]:
        """The traps the configuration and the armed dpd/close actions want (cached per
        configuration and armed set: called after every SA deletion)."""
        stamp = (self.d.config.connections, frozenset(self._armed))
        cached = self._wanted
        if cached is not None and cached[0][0] is stamp[0] and cached[0][1] == stamp[1]:
            return cached[1]
        wanted: dict[TrapKey, TrapSpec] = {}
        for conn in self.d.config.connections:
            if not self.d.start_filter(conn.name):
                continue  # another worker's (check-config refuses trap with workers)
            for child in conn.children:
                key = (conn.name, child.name)
                if child.start_action == "trap" or key in self._armed:
                    wanted[key] = trap_spec(conn, child)
        self._wanted = (stamp, wanted)
        return wanted

    def sync(self) -> None:
        """Install the traps the configuration (and dpd/close actions) want, remove the
        others. A trap whose Child config still has Child SAs is left alone until they
        are gone: they share its out policies (docs/daemon.md)."""
        wanted = self._wanted_traps()
        if not wanted and not len(self.table):
            return  # the common case: no traps at all, nothing to look at
        busy = {(r.connection, c.name) for r, c in self.d.sas.children()}
        for trap in self.table.all():
            key = trap.spec.key
            if wanted.get(key) != trap.spec and key not in busy:
                self._remove(key)
        for key, spec in wanted.items():
            if key in self.table or key in busy:
                continue
            try:
                reqid = self.d.dataplane.install_trap(spec)
            except DataplaneError as exc:
                self.d.report(
                    "trap-install-failed",
                    logging.ERROR,
                    connection=spec.connection,
                    child=spec.child,
                    error=Logged(exc),
                    message=Published(f"trap install failed: {exc}"),
                )
                continue
            self.table.add(spec, reqid)
            self.d.report(
                "trap-installed",
                connection=spec.connection,
                child=spec.child,
                reqid=f"{reqid:#010x}",
                local_ts=",".join(spec.local_ts),
                remote_ts=",".join(spec.remote_ts),
            )

    def _remove(self, key: TrapKey) -> None:
        self.table.remove(key)
        try:
            self.d.dataplane.remove_trap(key)
        except DataplaneError as exc:
            self.d.report(
                "trap-remove-failed", logging.ERROR, connection=key[0], child=key[1], error=exc
            )
            return
        self.d.report("trap-removed", connection=key[0], child=key[1])

    # ------------------------------------------------------------------ ACQUIRE

    def acquired(self, reqid: int, src: str | None, dst: str | None) -> None:
        """The kernel's ACQUIRE for one of our traps: initiate its Child (RFC 4301 §4.4),
        once; the packet's addresses go first in the traffic selectors (RFC 7296 §2.9)."""
        now = self.d.clock()
        trap = self.table.acquire(reqid, now)
        if trap is None:
            found = self.table.by_reqid(reqid)
            if found is not None:
                self.d.report(
                    "trap-acquire-coalesced",
                    logging.DEBUG,
                    connection=found.spec.connection,
                    child=found.spec.child,
                    state=found.state,
                )
            return
        spec = trap.spec
        conn = self.d.config.connection(spec.connection)
        self.d.report(
            "trap-acquire", connection=spec.connection, child=spec.child, src=src, dst=dst
        )
        if conn is None or conn.child(spec.child) is None:
            self.table.failed(spec.key, now)
            return
        packet_ts = _packet_ts(src, dst)
        records = self.d.sas.of(conn.name)
        up = next((r for r in records if r.state == "ESTABLISHED"), None)
        coming = next((r for r in records if r.state == "CONNECTING" and r.initiator), None)
        try:
            if up is not None:
                self.d.engine.create_child_sa(up.ike_sa, spec.child, now, packet_ts=packet_ts)
                self.table.initiated(spec.key, up.ike_sa)
            elif coming is not None:  # its Child follows when that IKE SA is up
                self.table.initiated(spec.key, coming.ike_sa)
                trap.packet_ts = packet_ts
            else:
                ike_sa = self.d.engine.initiate(conn.name, spec.child, now, packet_ts=packet_ts)
                self.d.sas.ensure(ike_sa, conn.name, True)
                self.table.initiated(spec.key, ike_sa)
                self.d.report(
                    "initiate",
                    connection=conn.name,
                    child=spec.child,
                    ike_sa=ike_sa,
                    trigger="acquire",
                )
        except (LocalError, ControlError) as exc:
            self.d.report(
                "trap-initiate-failed",
                logging.ERROR,
                connection=spec.connection,
                child=spec.child,
                error=exc,
            )
            self.table.failed(spec.key, now)
        self.d.pump()

    def _children_after_ike(self, ike_sa: int) -> None:
        """Traps that waited for this IKE SA: request their Child unless it came along."""
        record = self.d.sas.get(ike_sa)
        for trap in self.table.all():
            if trap.state != "CONNECTING" or trap.ike_sa != ike_sa:
                continue
            if record is None or record.state != "ESTABLISHED":
                self.table.failed(trap.spec.key, self.d.clock())
                continue
            if any(c.name == trap.spec.child for c in record.children):
                self.table.established(trap.spec.key)
                continue
            try:
                self.d.engine.create_child_sa(
                    ike_sa, trap.spec.child, self.d.clock(), packet_ts=trap.packet_ts
                )
            except LocalError as exc:
                self.d.report(
                    "trap-initiate-failed",
                    logging.ERROR,
                    connection=trap.spec.connection,
                    child=trap.spec.child,
                    error=exc,
                )
                self.table.failed(trap.spec.key, self.d.clock())
        self.d.pump()

    # ------------------------------------------------------------------ views

    def trap_dict(self, key: TrapKey) -> dict[str, Any] | None:
        """The Child's trap ({state: TRAPPED|CONNECTING|INSTALLED|BACKOFF, ...}) or None."""
        trap = self.table.get(key)
        return trap.as_dict() if trap is not None else None

    def stats(self) -> Mapping[str, Any]:
        counts: dict[str, int] = {}
        for trap in self.table.all():
            counts[trap.state] = counts.get(trap.state, 0) + 1
        return {"traps": counts}


def trap_spec(conn: ConnectionSection, child: ChildSection) -> TrapSpec:
    """The trap of a Child config: its selectors between the connection's first
    concrete addresses (check-config makes sure there are some)."""
    return TrapSpec(
        connection=conn.name,
        child=child.name,
        local=next((a for a in conn.local_addrs if concrete(a)), ""),
        remote=next((a for a in conn.remote_addrs if concrete(a)), ""),
        local_ts=tuple(child.local_ts),
        remote_ts=tuple(child.remote_ts),
        mode=child.mode,
    )


def _packet_ts(src: str | None, dst: str | None) -> Any:
    """(TSi, TSr) of the packet an ACQUIRE reports, or None when it does not say."""
    try:
        a, b = ipaddress.ip_address(src or ""), ipaddress.ip_address(dst or "")
    except ValueError:
        return None
    if a.version != b.version:
        return None
    return (ts_for_address(a), ts_for_address(b))
