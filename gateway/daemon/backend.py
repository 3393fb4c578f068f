"""The daemon's answers to the control API's questions and its configuration changes:
list-conns, list-sas, stats, reload/apply_config, and the metrics snapshot the
Prometheus exporter scrapes (docs/daemon.md, docs/metrics.md).

A Child SA's list-sas row and `stats` are the records' fields plus what each feature
manager adds (its `child_row` and `stats` hooks), so a new feature shows itself without
this module knowing it. The commands that act and wait (initiate, terminate, rekey,
redirect, migrate) are the features' own (gateway/daemon/actions.py, roaming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from gateway import __version__
from gateway.config.engine import engine_connection
from gateway.config.reload import gateway_changes
from gateway.config.schema import ConnectionSection, GatewayConfig, configured_children
from gateway.control.protocol import ControlError
from gateway.daemon.engine import engine_stats
from gateway.daemon.feature import Host
from gateway.daemon.records import ChildRecord, IkeRecord
from gateway.daemon.report import LogAs, Published, spi
from gateway.errors import GatewayError


def list_conns(d: Host) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "local_addrs": list(c.local_addrs),
            "remote_addrs": list(c.remote_addrs),
            "local_id": c.local.id,
            "remote_id": c.remote.id,
            "local_auth": c.local.auth,
            "remote_auth": c.remote.auth,
            "ike_proposals": list(c.ike_proposals),
            "start_action": _conn_start_action(c),
            "dpd_delay": c.dpd_delay,
            "follow_redirects": c.follow_redirects,
            "redirect_to": c.redirect_to,
            "redirect_on": c.redirect_on,
            "rekey_time": c.rekey_time,
            "reauth_time": c.reauth_time,
            "pools": list(c.pools),
            "vips": list(c.vips),
            "children": [
                {
                    "name": ch.name,
                    "local_ts": list(ch.local_ts),
                    "remote_ts": list(ch.remote_ts),
                    "esp_proposals": list(ch.esp_proposals),
                    "mode": ch.mode,
                    "start_action": ch.start_action,
                    "rekey_time": ch.rekey_time,
                    "life_time": ch.life_time,
                    "trap": d.traps.trap_dict((c.name, ch.name)),
                    "if_id_in": ch.if_id_in,
                    "if_id_out": ch.if_id_out,
                    "interface": ch.interface,
                }
                for ch in c.children
            ],
        }
        for c in d.config.connections
    ]


def sa_row(d: Host, r: IkeRecord) -> dict[str, Any]:
    """One IKE SA of list-sas, with its Child SAs."""
    return {
        "connection": r.connection,
        "ike_sa": r.ike_sa,
        "state": r.state,
        "initiator": r.initiator,
        "local_addr": r.local[0] if r.local else None,
        "local_port": r.local[1] if r.local else None,
        "remote_addr": r.remote[0] if r.remote else None,
        "remote_port": r.remote[1] if r.remote else None,
        "local_id": r.local_id,
        "remote_id": r.remote_id,
        "spi_i": r.spi_i.hex(),
        "spi_r": r.spi_r.hex(),
        "ike_proposal": r.proposal,
        "established_at": r.established_at,
        "rekey_at": r.rekey_at,
        "expire_at": r.expire_at,
        "mobike": r.mobike,
        "additional_addrs": list(r.additional_addrs),
        "virtual_ips": list(r.virtual_ips),
        "eap_identity": r.eap_identity,
        "eap_method": r.eap_method,
        "children": [child_row(d, c) for c in r.children],
    }


def child_row(d: Host, c: ChildRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": c.name,
        "state": c.state,
        "spi_in": spi(c.spi_in),
        "spi_out": spi(c.spi_out),
        "mode": c.mode,
        "encap": c.encap,
        "esp_proposal": c.esp_proposal,
        "local_ts": c.local_ts,
        "remote_ts": c.remote_ts,
        "installed_at": c.installed_at,
        "rekey_at": c.rekey_at,
        "expire_at": c.expire_at,
    }
    for feature in d.features:  # offload and counters (data plane), xdp (XDP slots), ...
        row.update(feature.child_row(c))
    return row


def list_sas(d: Host) -> list[dict[str, Any]]:
    return [sa_row(d, r) for r in d.sas.values()]


def sa_changes(d: Host, since: Mapping[str, Any] | None) -> dict[str, Any]:
    """list-sas with `since` (docs/daemon.md, "Incremental list-sas"): the rows of the
    IKE SAs that changed after the client's cursor, the handles of those removed, and
    the four data-plane counters of every other Child SA. A cursor of another run
    (epoch), one older than the removals still remembered, or none: the whole table
    (`full`)."""
    table = d.sas
    full = (
        since is None
        or since.get("epoch") != table.epoch
        or int(since.get("version", 0)) < table.forgotten
        or int(since.get("version", 0)) > table.version
    )
    removed: list[int] = []
    if full:
        changed = list(table.values())
    else:
        assert since is not None
        changed, removed = table.changes(int(since["version"]))
    rows = [sa_row(d, r) for r in changed]
    fresh = {r.ike_sa for r in changed}
    counters = d.traffic.child
    moved = []
    for record in table.values():
        if record.ike_sa in fresh:
            continue
        for child in record.children:
            c = counters(child)
            moved.append(
                [
                    record.ike_sa,
                    spi(child.spi_in),
                    c.bytes_in,
                    c.bytes_out,
                    c.packets_in,
                    c.packets_out,
                ]
            )
    return {
        "epoch": table.epoch,
        "version": table.version,
        "full": full,
        "sas": rows,
        "removed": removed,
        "counters": moved,
    }


def stats(d: Host) -> dict[str, Any]:
    """Gateway-wide counters, from the records and each Child's data-plane counters
    (no list-sas rows are built: the console asks for this every second)."""
    by_state: dict[str, int] = {}
    children = 0
    b_in, b_out, p_in, p_out = 0, 0, 0, 0
    counters = d.traffic.child
    for record in d.sas.values():
        by_state[record.state] = by_state.get(record.state, 0) + 1
        for child in record.children:
            children += 1
            c = counters(child)
            b_in += c.bytes_in
            b_out += c.bytes_out
            p_in += c.packets_in
            p_out += c.packets_out
    gone = d.traffic.gone_total()  # Child SAs that are gone: totals never go backwards
    out: dict[str, Any] = {
        "uptime": d.clock() - d.started_at,
        "version": __version__,
        "ike_sas": by_state,
        "child_sas": children,
        "bytes_in": gone.bytes_in + b_in,
        "bytes_out": gone.bytes_out + b_out,
        "packets_in": gone.packets_in + p_in,
        "packets_out": gone.packets_out + p_out,
    }
    return out | common_stats(d)


def common_stats(d: Host) -> dict[str, Any]:
    """`stats` but what is counted over the SA table (IKE/Child SAs, traffic totals)."""
    t = d.totals
    out: dict[str, Any] = {
        "xdp": [],
        "handshakes": t.handshakes,
        "auth_failures": t.auth_failures,
        "dpd_failures": t.dpd_failures,
        "rekeys": t.rekeys,
        "reauths": t.reauths,
        "redirects": t.redirects,
        "install_failures": t.install_failures,
        "engine_errors": t.engine_errors,
        "transport": d.transport.counters.as_dict(),
        "engine": engine_stats(d.engine),
        "control": {
            "requests": d.control.requests,
            "bad_requests": d.control.bad_requests,
        },
    }
    for feature in d.features:  # dataplane + xfrm_errors, xdp, traps, handshake_durations
        out.update(feature.stats())
    return out


def apply_config(d: Host, new: GatewayConfig) -> dict[str, Any]:
    """Apply a new configuration: only added, removed and changed connections move."""
    old_by_name = {c.name: c for c in d.config.connections}
    new_by_name = {c.name: c for c in new.connections}
    added = [n for n in new_by_name if n not in old_by_name]
    removed = [n for n in old_by_name if n not in new_by_name]
    changed = [n for n in new_by_name if n in old_by_name and new_by_name[n] != old_by_name[n]]
    unchanged = [n for n in new_by_name if n in old_by_name and n not in changed]
    restart_needed, xdp_changed = gateway_changes(d.config.gateway, new.gateway)
    # Tear down SAs of removed and changed connections (telling the peers).
    for record in list(d.sas.values()):
        if record.connection in removed or record.connection in changed:
            with contextlib.suppress(ControlError):
                d.engine_call(d.engine.delete_ike_sa, record.ike_sa)
            record.state = "DELETING"
            d.sas.touch(record.ike_sa)
    for name in removed + changed:
        d.retries.cancel(name)  # a changed one starts anew below
    d.pump()
    d.engine.set_connections([engine_connection(c) for c in new.connections])
    gateway = d.config.gateway
    if xdp_changed and d.xdp is not None and new.gateway.xdp is not None:
        try:  # steering, unknown-SPI drop and the shield change in place
            d.xdp.update_settings(new.gateway.xdp)
            gateway = dataclasses.replace(gateway, xdp=new.gateway.xdp)
        except GatewayError as exc:
            d.report("xdp-settings-failed", logging.ERROR, error=exc)
    d.config = GatewayConfig(gateway, new.connections, new.source, new.pools)
    for feature in d.features:  # the EAP users file read again, the pools replaced
        feature.reloaded(d.config)
    d.traps.forget(removed + changed)
    d.traps.sync()  # those of removed/changed connections once their SAs are gone
    for name in added + changed:
        d.actions.start_actions(new_by_name[name])
    d.pump()
    result = {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}
    d.report(
        "config-reloaded",
        added=_names(added),
        removed=_names(removed),
        changed=_names(changed),
        unchanged=LogAs(str(len(unchanged)), unchanged),
        restart_needed=Published(restart_needed),
    )
    if restart_needed:
        d.report(
            "config-gateway-changed", logging.WARNING, detail="[gateway] changes need a restart"
        )
    return result | {"restart_needed": restart_needed}


def _names(names: list[str]) -> LogAs:
    return LogAs(",".join(names) or "-", names)


def metrics_snapshot(d: Host) -> Any:
    """Called from the exporter's thread. On the event loop: the counters read (itself
    off the loop, at most one at a time, reused within counters_interval), then only a
    list of the IKE SA records and the gateway-wide stats; the rows of 100,000 Child SAs
    are built here, in the exporter's thread, so IKE keeps being served meanwhile. That
    is safe: record fields are replaced, never changed in place, and the counter tables
    are swapped whole. A Child SA that ends meanwhile may miss from this one scrape
    (its totals are not in the `retired` read before); the exporter never lets a series
    go backwards, so the next scrape has it again (gateway/metrics.py)."""
    from gateway import metrics

    loop = d.loop
    if loop is None or loop.is_closed():
        raise GatewayError("the daemon is not running")

    async def capture() -> tuple[list[IkeRecord], dict[str, Any]]:
        await d.traffic.refresh()
        return list(d.sas.values()), common_stats(d)  # (its `retired` first, then rows)

    future = asyncio.run_coroutine_threadsafe(capture(), loop)
    try:
        records, common = future.result(timeout=metrics.SCRAPE_TIMEOUT)
    except TimeoutError:
        future.cancel()
        raise GatewayError("the daemon did not answer the scrape in time") from None
    return metrics.snapshot_from(
        (),
        common,
        start_time=d.started_at,
        configured=configured_children(d.config),
        rows=child_rows(d, records),
    )


def child_rows(d: Host, records: list[IkeRecord]) -> tuple[dict[str, int], list[Any]]:
    """(IKE SAs by state, a metrics.ChildRow per Child SA) of the IKE SA records."""
    from gateway.metrics import ChildRow

    states: dict[str, int] = {}
    rows = []
    child = d.traffic.child
    for record in records:
        connection, state = record.connection, record.state
        states[state] = states.get(state, 0) + 1
        for c in tuple(record.children):
            installed = c.installed
            rows.append(
                ChildRow(
                    connection,
                    c.name,
                    c.state,
                    state,
                    c.esp_proposal,
                    c.mode,
                    installed.offload if installed is not None else "none",
                    spi(c.spi_in),
                    spi(c.spi_out),
                    child(c),
                )
            )
    return states, rows


def _conn_start_action(conn: ConnectionSection) -> str:
    actions = {c.start_action for c in conn.children}
    for action in ("start", "trap"):
        if action in actions:
            return action
    return "none"
