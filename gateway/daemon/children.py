"""Child SAs into the data plane (gateway/dataplane/): the feature manager that installs,
rekeys, moves and removes them, and records each one in the SA table once installed.

    ChildSaEstablished       install; recorded as a ChildRecord (refused: ChildSaFailed
                             stands in, the peer is told with a Delete). The Child SAs
                             of one pump round go to the data plane together first
                             (`prepare`: one batched netlink send), each all or nothing.
                             A duplicate of the same peer over another IKE SA replaces
                             the old one
    ChildSaRekeyed           make-before-break (docs/daemon.md): the new SAs in, the
                             policies moved, the outbound SA in use out, the old inbound
                             SA kept until its Delete + REKEY_GRACE. As the rekey's
                             responder (`outbound` False) only the new inbound SA: we keep
                             sending on the old one until ChildSaOutboundSwitched.
    ChildSaOutboundSwitched  the responder's second step (RFC 7296 §2.8)
    ChildSaEstablished with `replaces` (reauthentication, §2.8.3): installed in the older
                             IKE SA's Child SA's place like a rekey (its reqid and
                             policies); that Child SA leaves the older IKE SA's record
                             and its inbound SA is kept until its ChildSaDeleted + grace
    IkeSaMigrated            MOBIKE: every Child SA to the new outer addresses
    ChildSaDeleted           removed (an old SA after its rekey: REKEY_GRACE later)
    IkeSaDeleted             whatever it still had, removed

Batching (`prepare`): the ChildSaEstablished events of a round are installed in one
`Dataplane.install_many` call, up to the first event that changes the data plane in
another way (a rekey, delete, move: an install after it may depend on it), so the
kernel sees the same order of effects as one install per event. on_event then takes
each child's result; a result nobody took (its event never reached us) is removed at
the next round.

Every SA that goes (the outbound SA a rekey replaces, an old inbound SA after its grace,
all of a Child that ends) has its counters read just before, for gateway/daemon/
traffic.py: the Child's counters carry on over rekeys and nothing it counted is lost.

Offload: what the kernel did is read back into each Installed; `offload = "auto"` that
got less (no offload on the device, ESN, UDP encapsulation ...) is logged once per Child
(`child-offload-fallback`, with the device and the reason) and counted per install,
rekey and move (`offload_fallbacks`, ipsec_child_sa_offload_fallbacks_total).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from gateway.control.protocol import ControlError
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.records import ChildRecord, IkeRecord
from gateway.daemon.report import Logged, Published, endpoint, spi, yes_no
from gateway.dataplane.base import ZERO, DataplaneError, Installed
from ike import events as ev
from ike.ts import to_cidrs

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection

REKEY_GRACE: Final = 2.0  # an old inbound SA stays this long after its Delete (in flight)
# events a batch of installs may pass over: they change nothing in the data plane
BATCH_NEUTRAL: Final = (ev.ChildSaEstablished, ev.IkeSaEstablished)


class Retiring(NamedTuple):
    """An old inbound SA kept after a rekey, until its Delete + REKEY_GRACE."""

    ike_sa: int
    sa: Installed
    child: ChildRecord
    connection: str


class ChildSas(Feature):
    """The data plane's side of every Child SA, and its record in the SA table."""

    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.dataplane = daemon.dataplane
        # old inbound SAs kept after a rekey, by old spi_in; removed REKEY_GRACE after
        # their Delete
        self._retiring: dict[int, Retiring] = {}
        # installs done by prepare(): id(event) -> (the event, its result)
        self._prepared: dict[int, tuple[ev.ChildSaEstablished, Installed | DataplaneError]] = {}
        self.batches = 0  # install_many calls (stats: `install_batches`)

    def prepare(self, events: Sequence[Any]) -> None:
        """Install the round's new Child SAs in one batch (see the module docstring)."""
        for _event, result in self._prepared.values():  # results nobody took: undo
            if isinstance(result, Installed):
                with contextlib.suppress(DataplaneError):
                    self.dataplane.remove(result)
        self._prepared.clear()
        batch: list[ev.ChildSaEstablished] = []
        for event in events:
            if not isinstance(event, BATCH_NEUTRAL):
                break
            # a reauthentication's Child SA replaces an installed one (_take_over)
            if isinstance(event, ev.ChildSaEstablished) and event.replaces is None:
                batch.append(event)
        if len(batch) < 2:
            return  # one alone goes through install() in on_event
        results = self.dataplane.install_many(
            [(e, self._config(e.connection, e.child)) for e in batch]
        )
        self.batches += 1
        for event, result in zip(batch, results, strict=True):
            self._prepared[id(event)] = (event, result)

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: Any, ctx: EventContext) -> ev.Event | None:
        match event:
            case ev.ChildSaEstablished():
                return self._established(event)
            case ev.ChildSaRekeyed():
                return self._rekeyed(event, ctx)
            case ev.ChildSaOutboundSwitched() if ctx.sa is not None:
                child = ctx.sa.child(event.spi_in)
                if child is not None:
                    self.switch_outbound(ctx.sa, child, event.reason)
            case ev.IkeSaMigrated():
                self._migrated(event, ctx)
            case ev.ChildSaDeleted():
                self._deleted(event, ctx)
            case ev.IkeSaDeleted():
                for old, entry in list(self._retiring.items()):
                    if entry.ike_sa == event.ike_sa:
                        self.retire(old)
                for child in ctx.children:  # normally gone already with ChildSaDeleted
                    assert ctx.sa is not None
                    self.remove(ctx.sa, child)
        return None

    def retiring_spis(self) -> list[int]:
        """The old inbound SAs kept after their rekey (by inbound SPI)."""
        return list(self._retiring)

    def retiring(self, spi_in: int) -> bool:
        """An old inbound SA kept after its rekey (its ChildSaDeleted is no Child's end)."""
        return spi_in in self._retiring

    def _config(self, connection: str, child: str) -> ChildSection | None:
        conn = self.d.config.connection(connection)
        return conn.child(child) if conn else None

    def _established(self, e: ev.ChildSaEstablished) -> ev.ChildSaFailed | None:
        record = self.d.sas.ensure(e.ike_sa, e.connection, e.initiator)
        if e.replaces is not None and self._take_over(record, e):
            return None
        config = self._config(e.connection, e.child)
        try:
            try:
                installed = self._install(e, config)
            except DataplaneError as exc:
                # only a key clash with an installed Child SA (EEXIST) can be a duplicate
                if exc.errno != errno.EEXIST or not self._replace_duplicate(record, e):
                    raise
                installed = self.dataplane.install(e, config)
        except DataplaneError as exc:
            self._failed("child-install-failed", e.connection, e.child, e.spi_in, exc)
            # An SA we cannot install must not stay negotiated: tell the peer.
            with contextlib.suppress(ControlError):
                self.d.engine_call(self.d.engine.delete_child_sa, e.ike_sa, e.spi_in)
            return ev.ChildSaFailed(
                e.ike_sa, e.connection, e.child, f"install failed: {exc}", e.time
            )
        child = self._record(e, installed)
        self.d.traffic.recorded(child)
        record.children.append(child)
        self._offload_result(e.connection, child, installed, None)
        return None

    def _replace_duplicate(self, record: IkeRecord, e: ev.ChildSaEstablished) -> bool:
        """The same peer (remote identity) already has this Child SA installed over another
        IKE SA, and the kernel refused the new one (its policies have the same key: e.g.
        0.0.0.0/0 with one if_id): the peer gave up on that IKE SA (a restart, an attempt
        it abandoned while we still answered it). The new Child SA replaces the old one,
        which is removed here and deleted with the peer (its IKE SA with it when it
        carries nothing else: no DPD restart follows). strongSwan does the same for a
        peer's new IKE SA (uniqueness, INITIAL_CONTACT)."""
        for other in list(self.d.sas.values()):
            if other is record or other.connection != e.connection:
                continue
            if other.remote_id is None or other.remote_id != record.remote_id:
                continue
            old = next((c for c in other.children if c.name == e.child), None)
            if old is None or old.installed is None:
                continue
            self.remove(other, old)
            self.d.report(
                "child-duplicate-replaced",
                logging.WARNING,
                connection=e.connection,
                child=e.child,
                ike_sa=e.ike_sa,
                old_ike_sa=other.ike_sa,
                old_spi_in=spi(old.spi_in),
                spi_in=spi(e.spi_in),
            )
            with contextlib.suppress(ControlError):
                if other.children:
                    self.d.engine_call(self.d.engine.delete_child_sa, other.ike_sa, old.spi_in)
                else:
                    self.d.engine_call(self.d.engine.delete_ike_sa, other.ike_sa)
            return True
        return False

    def _install(self, e: ev.ChildSaEstablished, config: ChildSection | None) -> Installed:
        """The child's result from prepare()'s batch, else an install of its own."""
        prepared = self._prepared.pop(id(e), None)
        if prepared is None or prepared[0] is not e:
            return self.dataplane.install(e, config)
        if isinstance(prepared[1], DataplaneError):
            raise prepared[1]
        return prepared[1]

    def _take_over(self, record: IkeRecord, e: ev.ChildSaEstablished) -> bool:
        """A reauthentication's Child SA replaces the older IKE SA's one, make-before-
        break: False when there is nothing to replace (then it is installed anew)."""
        assert e.replaces is not None
        old_ike, old_spi = e.replaces
        old_record = self.d.sas.get(old_ike)
        old = old_record.child(old_spi) if old_record is not None else None
        if old_record is None or old is None or old.installed is None:
            return False
        in_use = old.sending or old.installed  # whose outbound SA we send on
        # the outbound SA in use goes when we (the initiator) switch: what it counted
        sending = self.dataplane.counters(in_use, inbound=False) if e.initiator else ZERO
        try:
            installed = self.dataplane.replace(
                in_use if e.initiator else old.installed,
                e,
                self._config(e.connection, e.child),
                keep_old_inbound=True,
                switch_outbound=e.initiator,
            )
        except DataplaneError as exc:
            self._failed("child-reauth-install-failed", e.connection, e.child, e.spi_in, exc)
            return False
        child = self._record(e, installed, None if e.initiator else in_use)
        child.carried = old.carried  # the Child's counts carry on over its reauthentication
        self.d.traffic.recorded(child)
        old_record.children.remove(old)
        record.children.append(child)
        if e.initiator:
            self.d.traffic.sa_gone(e.connection, child, sending)
        # the old inbound SA (it counts for the new Child) until the old Child SA's
        # ChildSaDeleted (+ grace): kept under the new IKE SA, so the old IKE SA's end does
        # not cut the grace short
        self._retiring[old.spi_in] = Retiring(e.ike_sa, old.installed, child, e.connection)
        child.retiring.append(old.installed)
        self._offload_result(e.connection, child, installed, old.installed)
        return True

    def _record(
        self, e: ev.ChildSaEstablished, installed: Installed, sending: Installed | None = None
    ) -> ChildRecord:
        return ChildRecord(
            name=e.child,
            state="INSTALLED",
            spi_in=e.spi_in,
            spi_out=e.spi_out,
            mode=e.mode,
            encap=e.encap is not None,
            esp_proposal=e.proposal,
            local_ts=[c for ts in e.local_ts for c in to_cidrs(ts)],
            remote_ts=[c for ts in e.remote_ts for c in to_cidrs(ts)],
            installed_at=e.time or self.d.clock(),
            rekey_at=e.rekey_at,
            expire_at=e.expire_at,
            installed=installed,
            sending=sending,
        )

    def _rekeyed(self, e: ev.ChildSaRekeyed, ctx: EventContext) -> ev.Event | None:
        new = e.new
        child = ctx.sa.child(e.old_spi_in) if ctx.sa is not None else None
        if ctx.sa is None or child is None or child.installed is None:
            # nothing to replace (after a collision): the new SA is a Child SA of its own
            return self._established(new) or new
        config = self._config(e.connection, e.child)
        old = child.installed
        in_use = child.sending or old  # whose outbound SA we send on
        # the outbound SA in use goes with a rekey we start: what it counted, just before
        sending = self.dataplane.counters(in_use, inbound=False) if e.outbound else ZERO
        try:
            if e.outbound:
                installed = self.dataplane.replace(in_use, new, config, keep_old_inbound=True)
            else:
                installed = self.dataplane.replace(
                    old, new, config, keep_old_inbound=True, switch_outbound=False
                )
        except DataplaneError as exc:
            self._failed("child-rekey-install-failed", e.connection, e.child, new.spi_in, exc)
            with contextlib.suppress(ControlError):  # the old SA stays in use
                self.d.engine_call(self.d.engine.delete_child_sa, e.ike_sa, new.spi_in)
            reason = f"install failed: {exc}"
            return ev.ChildSaFailed(e.ike_sa, e.connection, e.child, reason, e.time)
        if e.outbound:
            self.d.traffic.sa_gone(e.connection, child, sending)
        # the old inbound SA stays (and counts) until its Delete + REKEY_GRACE
        self._retiring[e.old_spi_in] = Retiring(e.ike_sa, old, child, e.connection)
        child.retiring.append(old)
        child.sending = None if e.outbound else in_use
        child.spi_in, child.spi_out = new.spi_in, new.spi_out
        child.esp_proposal = new.proposal
        child.installed = installed
        child.installed_at = new.time or self.d.clock()
        child.rekey_at, child.expire_at = new.rekey_at, new.expire_at
        self._offload_result(e.connection, child, installed, old)
        return None

    def switch_outbound(self, record: IkeRecord, child: ChildRecord, reason: str) -> None:
        """Send on the Child's newest SA (a rekey we answered, or before a move)."""
        if child.sending is None or child.installed is None:
            return  # switched already, its install failed, or the Child is gone
        old_spi_out = child.sending.spi_out
        counters = self.dataplane.counters(child.sending, inbound=False)
        try:
            child.installed = self.dataplane.switch_outbound(child.sending, child.installed)
        except DataplaneError as exc:  # the old outbound SA stays in use
            self._failed("child-switch-failed", record.connection, child.name, child.spi_in, exc)
            return
        child.sending = None
        self.d.traffic.sa_gone(record.connection, child, counters)
        self._offload_result(record.connection, child, child.installed, None)
        self.d.report(
            "child-outbound-switched",
            connection=record.connection,
            child=child.name,
            ike_sa=record.ike_sa,
            spi_out=spi(child.spi_out),
            old_spi_out=spi(old_spi_out),
            reason=repr(reason),
        )

    def _migrated(self, e: ev.IkeSaMigrated, ctx: EventContext) -> None:
        failures = 0
        wanted = dict(e.children)
        for child in ctx.children:
            if child.spi_in not in wanted or child.installed is None:
                continue
            # a rekey we answered still sending on the old SA: the peer moving (or
            # answering our move) normally has our answer: send on the new SA first
            assert ctx.sa is not None
            self.switch_outbound(ctx.sa, child, "migrating")
            before = child.installed
            try:
                child.installed = self.dataplane.migrate(
                    child.installed, e.local[0], e.remote[0], e.encap
                )
            except DataplaneError as exc:
                failures += 1
                self.d.report(
                    "child-migrate-failed",
                    logging.ERROR,
                    connection=e.connection,
                    child=child.name,
                    spi_in=Logged(spi(child.spi_in)),
                    error=Logged(exc),
                    message=Published(f"migrate failed: {exc}"),
                )
                continue
            child.encap = e.encap is not None
            self._offload_result(e.connection, child, child.installed, before)
        self.d.report(
            "ike-migrated",
            connection=e.connection,
            ike_sa=e.ike_sa,
            local=Logged(endpoint(e.local)),
            remote=Logged(endpoint(e.remote)),
            old_local=Logged(endpoint(e.old_local)),
            old_remote=Logged(endpoint(e.old_remote)),
            nat=Logged(yes_no(e.nat_detected)),
            children=Logged(len(e.children)),
            failed=Logged(failures),
            local_addr=Published(e.local[0]),
            remote_addr=Published(e.remote[0]),
            old_local_addr=Published(e.old_local[0]),
            old_remote_addr=Published(e.old_remote[0]),
            encap=Published(e.encap is not None),
        )

    def _deleted(self, e: ev.ChildSaDeleted, ctx: EventContext) -> None:
        if e.spi_in in self._retiring:  # an old SA after its rekey: its Delete is done
            self.d.later(self.d.rekey_grace, self.retire, e.spi_in)
            return
        if ctx.sa is not None:
            for child in list(ctx.sa.children):
                if child.spi_in == e.spi_in:
                    self.remove(ctx.sa, child)

    def _failed(
        self, event: str, connection: str, child: str, spi_in: int, exc: DataplaneError
    ) -> None:
        """The data plane refused a Child SA (install, rekey or switch): count, log, tell."""
        self.d.totals.install_failures += 1
        self.d.report(
            event,
            logging.ERROR,
            connection=connection,
            child=child,
            spi_in=Logged(spi(spi_in)),
            error=Logged(exc),
            message=Published(f"install failed: {exc}"),
        )

    def _offload_result(
        self, connection: str, child: ChildRecord, now: Installed, before: Installed | None
    ) -> None:
        """`auto` got less than asked from the kernel: counted every time (install,
        rekey, move); logged when the Child's SAs were offloaded before or it is new."""
        if not now.offload_reason or now.offload != "none":
            return  # got what was asked (or offload was not asked)
        key = f"{connection}.{child.name}"
        fallbacks = self.d.totals.offload_fallbacks
        fallbacks[key] = fallbacks.get(key, 0) + 1
        if before is not None and before.offload == "none":
            return  # in software already: said when it began
        self.d.report(
            "child-offload-fallback",
            logging.WARNING,
            connection=connection,
            child=child.name,
            spi_in=spi(now.spi_in),
            device=now.offload_dev or "-",
            reason=repr(now.offload_reason),
        )

    # ------------------------------------------------------------------ removal

    def retire(self, spi_in: int) -> None:
        """Remove an old inbound SA kept after a rekey (its counts stay with its Child)."""
        entry = self._retiring.pop(spi_in, None)
        if entry is None:
            return
        old, child = entry.sa, entry.child
        if old in child.retiring:
            child.retiring.remove(old)
        self.d.traffic.sa_gone(
            entry.connection, child, self.dataplane.counters(old, outbound=False)
        )
        try:
            self.dataplane.retire(old)
        except DataplaneError as exc:
            self.d.report("child-retire-failed", logging.ERROR, spi_in=spi(spi_in), error=exc)

    def remove(self, record: IkeRecord, child: ChildRecord) -> None:
        """The Child SA out of the data plane and the SA table; what its SAs counted
        (read just before they go) goes to its (connection, child) totals."""
        if child in record.children:
            record.children.remove(child)
        if child.installed is None:
            return
        for old, entry in list(self._retiring.items()):  # in its grace: goes with its Child
            if entry.child is child:
                self.retire(old)
        traffic = self.d.traffic
        final = self.dataplane.counters(child.installed, outbound=child.sending is None)
        if child.sending is not None:
            final = final.plus(self.dataplane.counters(child.sending, inbound=False))
        traffic.sa_gone(record.connection, child, final)
        try:
            if child.sending is not None:  # a rekey responder still sending on it
                self.dataplane.remove(child.sending)
                child.sending = None
            self.dataplane.remove(child.installed)
        except DataplaneError as exc:
            self.d.report(
                "child-remove-failed",
                logging.ERROR,
                connection=record.connection,
                child=child.name,
                spi_in=spi(child.spi_in),
                error=exc,
            )
        child.installed = None
        traffic.child_ended(record.connection, child)

    def stop(self) -> None:
        for record in list(self.d.sas.values()):
            for child in list(record.children):
                self.remove(record, child)
        for old in list(self._retiring):
            self.retire(old)

    # ------------------------------------------------------------------ rows

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        installed = child.installed
        if installed is None:
            return {"offload": "none", "offload_dev": None, "offload_reason": ""}
        return {
            "offload": installed.offload,
            "offload_dev": installed.offload_dev,
            "offload_reason": installed.offload_reason,
        }

    def packets_in(self, record: IkeRecord, child: ChildRecord) -> int:
        if child.installed is None:
            return 0
        return self.dataplane.counters(child.installed, outbound=False).packets_in

    def stats(self) -> Mapping[str, Any]:
        return {
            "dataplane": self.dataplane.name,
            "xfrm_errors": self.dataplane.errors(),
            "install_batches": self.batches,
            "offload_fallbacks": dict(self.d.totals.offload_fallbacks),
        }
