"""`updown` per child (swanctl's key; docs/routing.md, "updown hooks"): the feature
manager that runs a child's program when its Child SA comes up, goes down or (with
`updown_rekey`) is rekeyed, through gateway/routing/hooks.py's runner.

    ChildSaEstablished  `up-client` (after the data plane and a route-based Child's
                        interface and routes: the program finds them in place)
    ChildSaRekeyed      `rekey-client` with the old SPIs, only with updown_rekey
    ChildSaDeleted      `down-client` with GW_REASON (delete, dpd, expired, shutdown, ...)
    IkeSaDeleted        the same for whatever the IKE SA still had

Runs never block the event loop: they are queued per Child (a down never overtakes its
up), bounded by [gateway.hooks] max_concurrent, killed after its timeout. Each result is
reported (`hook-done`, or `hook-failed` with the status failed/timeout/error, published
to the console) and counted (`stats.hooks`, Prometheus `ipsec_hook_runs_total`). At
shutdown the downs of the SAs just deleted still run, for up to the hook timeout.
The PSKs of the configuration are replaced by `<redacted>` in the output the log shows.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.report import Logged, Published
from gateway.daemon.tunnels import down_reason
from gateway.routing.hooks import ChildInfo, HookEvent, HookResult, HookRunner
from ike import events as ev

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection

SHUTDOWN_WAIT = 10.0  # at most this long for the downs of a shutdown (or the hook timeout)


class Updown(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.runner: HookRunner | None = None
        # Child SAs whose child has an updown program: inbound SPI -> (its info, program)
        self._up: dict[int, tuple[ChildInfo, str]] = {}

    def _config(self, connection: str, child: str) -> ChildSection | None:
        conn = self.d.config.connection(connection)
        found = conn.child(child) if conn is not None else None
        return found if found is not None and found.updown else None

    def _runner(self) -> HookRunner:
        if self.runner is None:
            hooks = self.d.config.gateway.hooks
            secrets = [
                c.psk.value.decode(errors="replace") for c in self.d.config.connections if c.psk
            ]
            self.runner = HookRunner(
                timeout=hooks.timeout,
                max_concurrent=hooks.max_concurrent,
                max_output_lines=hooks.max_output_lines,
                redact=secrets,
                on_result=self._result,
            )
        return self.runner

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.ChildSaEstablished():
                config = self._config(event.connection, event.child)
                if config is not None:
                    info = self._info(event, config)
                    if info is not None:
                        assert config.updown is not None
                        self._up[event.spi_in] = (info, config.updown)
                        self._submit(config.updown, HookEvent("up", info))
            case ev.ChildSaRekeyed():
                self._rekeyed(event)
            case ev.ChildSaDeleted():
                entry = self._up.pop(event.spi_in, None)
                if entry is not None:
                    reason = down_reason(event.reason, self.d.closing)
                    self._submit(entry[1], HookEvent("down", entry[0], reason=reason))
            case ev.IkeSaDeleted():
                for spi_in, (info, program) in list(self._up.items()):
                    if info.unique_id == event.ike_sa:
                        del self._up[spi_in]
                        reason = down_reason(event.reason, self.d.closing)
                        self._submit(program, HookEvent("down", info, reason=reason))
            case ev.IkeSaMigrated():  # MOBIKE: its down says where the Child SA was
                for spi_in, (info, program) in list(self._up.items()):
                    if info.unique_id == event.ike_sa:
                        self._up[spi_in] = (
                            dataclasses.replace(
                                info,
                                local=ipaddress.ip_address(event.local[0]),
                                remote=ipaddress.ip_address(event.remote[0]),
                                udp_encap_port=event.encap[1] if event.encap else None,
                            ),
                            program,
                        )

    def _info(self, e: ev.ChildSaEstablished, config: ChildSection) -> ChildInfo | None:
        from gateway.dataplane.xfrm import installed_spec

        record = self.d.sas.get(e.ike_sa)
        child = record.child(e.spi_in) if record is not None else None
        if record is None or child is None or child.installed is None:
            return None  # refused by the data plane: ChildSaFailed stands in
        try:
            spec = installed_spec(e, config, child.installed)
        except ValueError:
            return None
        tunnel = self.d.tunnels.interface_of(e.spi_in)
        return ChildInfo.from_spec(
            spec,
            e.connection,
            e.child,
            unique_id=e.ike_sa,
            local_id=record.local_id or "",
            remote_id=record.remote_id or "",
            interface=tunnel.name if tunnel is not None else "",
            proposal=e.proposal,
            mtu=tunnel.mtu if tunnel is not None else None,
            route_table=config.route_table if config.route_based else None,
            route_metric=config.route_metric if config.route_based else None,
        )

    def _rekeyed(self, e: ev.ChildSaRekeyed) -> None:
        entry = self._up.pop(e.old_spi_in, None)
        if entry is None:
            return
        old, program = entry
        config = self._config(e.connection, e.child)
        new = self._info(e.new, config) if config is not None else None
        if new is None:  # the rekeyed Child keeps what we knew, under its new SPIs
            new = dataclasses.replace(old, spi_in=e.new.spi_in, spi_out=e.new.spi_out)
        self._up[e.new.spi_in] = (new, program)
        if config is not None and config.updown_rekey:
            event = HookEvent("rekey", new, old_spi_in=e.old_spi_in, old_spi_out=e.old_spi_out)
            self._submit(program, event)

    def _submit(self, program: str, event: HookEvent) -> None:
        if self.d.loop is None:  # not running (a unit test's direct call): nothing to run
            return
        self._runner().submit(program, event)

    def _result(self, r: HookResult) -> None:
        c = r.event.child
        ok = r.status == "ok"
        self.d.report(
            "hook-done" if ok else "hook-failed",
            logging.INFO if ok else logging.WARNING,
            connection=c.connection,
            child=c.child,
            verb=r.verb,
            status=r.status,
            program=r.argv[0],
            rc=r.returncode,
            duration=Logged(f"{r.duration:.3f}"),
            detail=r.detail or None,
            message=Published(None if ok else f"updown {r.verb} {r.status}: {r.detail or ''}"),
        )

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        for info, program in self._up.values():  # normally gone with their IKE SAs
            self._submit(program, HookEvent("down", info, reason="shutdown"))
        self._up.clear()

    async def drain(self) -> None:
        if self.runner is not None:
            await self.runner.close(min(self.d.config.gateway.hooks.timeout, SHUTDOWN_WAIT))

    def stats(self) -> Mapping[str, Any]:
        if self.runner is None:
            return {}
        return {"hooks": dataclasses.asdict(self.runner.counters)}
