"""The configuration as the IKE engine takes it: our TOML sections -> ike/config.py.

`engine_connection` translates one `ConnectionSection` (the files a certificate
connection names are read here: ike/ does no I/O), `engine_settings` the `[gateway]`
knobs the engine has, and `check_engine_config` runs the engine's own checks over a
whole configuration so that what the TOML checks accept but the engine cannot run is a
clear error before anything starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.config.schema import DYNAMIC_TS, ConnectionSection, GatewayConfig, GatewaySettings
from gateway.errors import GatewayError
from ike import config as ike_config
from ike.errors import LocalError


def engine_connection(conn: ConnectionSection) -> ike_config.ConnectionConfig:
    """Our TOML connection as the engine's connection config."""
    children = tuple(
        ike_config.ChildConfig(
            name=c.name,
            local_ts=tuple(ts for ts in c.local_ts if ts != DYNAMIC_TS),
            remote_ts=tuple(ts for ts in c.remote_ts if ts != DYNAMIC_TS),
            esp_proposals=c.esp_proposals,
            mode=c.mode,
            rekey_time=c.rekey_time,
            life_time=c.life_time,
            rand_time=c.rand_time,
            dpd_action=c.dpd_action,
        )
        for c in conn.children
    )
    # certificate authentication: the engine gets the files' bytes (ike/ does no I/O)
    local, remote = conn.local, conn.remote
    local_pub, remote_pub = local.auth == "pubkey", remote.auth == "pubkey"
    return ike_config.ConnectionConfig(
        name=conn.name,
        local_addrs=tuple(a for a in conn.local_addrs if "/" not in a),
        remote_addrs=tuple(a for a in conn.remote_addrs if "/" not in a),
        local_id=conn.local.id or "",
        remote_id=conn.remote.id or "",
        psk=conn.psk.value if conn.psk else b"",
        ike_proposals=conn.ike_proposals,
        children=children,
        local_port=conn.local_port,
        remote_port=conn.remote_port,
        rekey_time=conn.rekey_time,
        over_time=conn.over_time,
        rand_time=conn.rand_time,
        dpd_delay=conn.dpd_delay,
        mobike=conn.mobike,
        fragmentation="yes" if conn.fragmentation == "force" else conn.fragmentation,
        follow_redirects=conn.follow_redirects,
        redirect_to=conn.redirect_to or "",
        redirect_on=conn.redirect_on,
        local_auth=local.auth,
        remote_auth=remote.auth,
        certs=_read_files(conn.name, local.certs) if local_pub else (),
        private_key=_read_files(conn.name, (local.key,))[0] if local_pub and local.key else b"",
        cacerts=_read_files(conn.name, remote.cacerts) if remote_pub else (),
        remote_certs=_read_files(conn.name, remote.certs) if remote_pub else (),
        crls=_read_files(conn.name, remote.crls) if remote_pub else (),
    )


def engine_settings(gateway: GatewaySettings) -> ike_config.EngineSettings:
    """The engine-wide knobs `[gateway]` sets (the rest keep the engine's defaults)."""
    return ike_config.EngineSettings(
        nat_t_port=gateway.port_nat_t,
        retransmit_timeout=gateway.retransmit_timeout,
        retransmit_base=gateway.retransmit_base,
        retransmit_tries=gateway.retransmit_tries,
    )


def check_engine_config(config: GatewayConfig) -> None:
    """Config the TOML checks accept but the engine cannot run yet: a clear error now."""
    issues: list[str] = []
    for conn in config.connections:
        try:
            ike_config.compile_connection(engine_connection(conn))
        except (LocalError, GatewayError) as exc:
            issues.append(str(exc))
    if issues:
        raise GatewayError("; ".join(issues))


def _read_files(connection: str, paths: Sequence[str]) -> tuple[bytes, ...]:
    out = []
    for path in paths:
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise GatewayError(
                f"connection {connection!r}: cannot read {path}: {exc.strerror}"
            ) from None
    return tuple(out)
