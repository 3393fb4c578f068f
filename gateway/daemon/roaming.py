"""MOBIKE roaming (RFC 4555): the feature manager that moves our IKE SAs when a local
address goes, and the `migrate` command that moves them by hand (docs/daemon.md).

An `AddressWatcher` (gateway/addrwatch.py) reports local address and route changes;
when an IKE SA we initiated with MOBIKE has lost its local address, a route lookup
toward the peer (limited to the connection's concrete local_addrs) picks a new one and
the engine sends UPDATE_SA_ADDRESSES. The engine's IkeSaMigrated then moves the Child
SAs (gateway/daemon/children.py) and the record (gateway/daemon/records.py). Without
netlink, roaming is off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.addrwatch import AddressWatcher
from gateway.config.schema import concrete
from gateway.control.protocol import FAILED, UNKNOWN_SA, ControlError
from gateway.daemon.feature import Feature, Host
from ike import events as ev

if TYPE_CHECKING:
    from gateway.daemon.records import IkeRecord


class Roaming(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.addrwatch: AddressWatcher | None = None
        self._roaming: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        """Watch local addresses and routes; without netlink, roaming is off."""
        watcher = AddressWatcher(self._addresses_changed)
        try:
            await watcher.start()
        except OSError as exc:
            watcher.close()
            self.d.report("addrwatch-unavailable", logging.WARNING, error=exc.strerror or exc)
            return
        self.addrwatch = watcher

    def stop(self) -> None:
        if self.addrwatch is not None:
            self.addrwatch.close()
        if self._roaming is not None:
            self._roaming.cancel()

    def _addresses_changed(self) -> None:
        if self._roaming is not None and not self._roaming.done():
            self._again = True  # one more pass when this one is done
            return
        self._roaming = asyncio.get_running_loop().create_task(self._roam())

    async def _roam(self) -> None:
        """Move every IKE SA we initiated with MOBIKE whose local address is gone."""
        while True:
            self._again = False
            await self._roam_once()
            if not self._again:
                return

    async def _roam_once(self) -> None:
        watcher = self.addrwatch
        if watcher is None:
            return
        try:
            present = await watcher.addresses()
        except OSError as exc:
            self.d.report("roam-failed", logging.ERROR, error=exc.strerror or exc)
            return
        for record in list(self.d.sas.values()):
            if not (record.mobike and record.initiator and record.state == "ESTABLISHED"):
                continue
            if record.local is None or record.remote is None:
                continue
            current = record.moving_to or record.local[0]
            if current in present:
                continue
            new = await self._pick_local(record, present)
            if record.ike_sa not in self.d.sas:
                continue  # went away while we looked
            if new is None:
                self.d.report(
                    "mobike-no-address",
                    logging.WARNING,
                    connection=record.connection,
                    ike_sa=record.ike_sa,
                    lost=current,
                    remote=record.remote[0],
                )
                continue
            self.d.report(
                "mobike-roam",
                connection=record.connection,
                ike_sa=record.ike_sa,
                lost=current,
                local=new,
                remote=record.remote[0],
            )
            try:
                self.d.engine_call(self.d.engine.update_addresses, record.ike_sa, new, None)
            except ControlError as exc:
                self.d.report("mobike-roam-failed", logging.ERROR, ike_sa=record.ike_sa, error=exc)
                continue
            record.moving_to = new
        self.d.pump()

    async def _pick_local(self, record: IkeRecord, present: set[str]) -> str | None:
        """A local address toward the peer: the route's source, if the connection allows
        it (concrete local_addrs) and we can send from it; else the first allowed one."""
        assert record.local is not None and record.remote is not None
        conn = self.d.config.connection(record.connection)
        allowed = [a for a in (conn.local_addrs if conn else ()) if concrete(a)]
        port = record.local[1]
        family = ":" in record.remote[0]

        def usable(addr: str | None) -> bool:
            return (
                addr is not None
                and addr in present
                and (":" in addr) == family
                and (not allowed or addr in allowed)
                and self.d.transport.socket_for((addr, port)) is not None
            )

        assert self.addrwatch is not None
        src = await self.addrwatch.source_for(record.remote[0])
        if usable(src):
            return src
        return next((a for a in allowed if usable(a)), None)

    async def migrate_command(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        """Move the connection's IKE SAs we initiated with MOBIKE to `local_addr` and/or
        `remote_addr`; with neither, to the source a route lookup toward the peer picks."""
        conn, _ = self.d.actions.resolve(name)
        records = [r for r in self.d.sas.of(conn.name) if r.state == "ESTABLISHED" and r.initiator]
        if not records:
            raise ControlError(UNKNOWN_SA, f"{conn.name} has no established IKE SA we initiated")
        if not all(r.mobike for r in records):
            raise ControlError(FAILED, f"{conn.name}: MOBIKE is not in use (peer or config)")
        present = await self.addrwatch.addresses() if self.addrwatch is not None else None
        moves: list[tuple[IkeRecord, str]] = []
        for r in records:
            assert r.local is not None
            local = local_addr
            if local is None and remote_addr is None and present is not None:
                local = await self._pick_local(r, present)
                if local is None:
                    raise ControlError(FAILED, f"no usable local address toward {r.remote}")
            if local is not None:
                if present is not None and local not in present:
                    raise ControlError(FAILED, f"{local} is not an address of this host")
                if self.d.transport.socket_for((local, r.local[1])) is None:
                    raise ControlError(
                        FAILED, f"the daemon has no IKE socket for {local} (listen on it)"
                    )
            moves.append((r, local or r.local[0]))
        pending = {r.ike_sa for r, _ in moves}
        failures: list[str] = []

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaMigrated | ev.IkeSaMigrateFailed | ev.IkeSaDeleted):
                if event.ike_sa not in pending:
                    return None
                pending.discard(event.ike_sa)
                if not isinstance(event, ev.IkeSaMigrated):
                    failures.append(event.reason)
                if not pending:
                    return "; ".join(failures)
            return None

        for r, local in moves:  # events come out of the engine only in pump()
            self.d.engine_call(self.d.engine.update_addresses, r.ike_sa, local, remote_addr)
            r.moving_to = local
        future = self.d.wait(match)
        self.d.pump()
        await self.d.outcome(future, timeout, f"migrate {name}")
        sas = [self.d.sa_row(r) for r, _ in moves if r.ike_sa in self.d.sas]
        where = ", ".join(f"{s['local_addr']} - {s['remote_addr']}" for s in sas)
        return {"message": f"migrate {name}: {len(moves)} IKE SA(s) now on {where}", "sas": sas}
