"""The configuration reader: TOML text -> a checked `GatewayConfig`, or every problem.

`load_config` reads a file, checks everything it can without the network (types, ranges,
addresses, selectors, proposal syntax, files, secret permissions) and either returns a
frozen `GatewayConfig` (gateway/config/schema.py) or raises one `ConfigError` listing
EVERY problem, each with its key path and, where the TOML text lets us find it, its
line. Defaults come from the schema's dataclasses; nothing here writes one again.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.issues import ConfigError, ConfigIssue, key_lines, toml_table
from gateway.config.schema import (
    ANY_ADDR,
    AUTH_METHODS,
    CLOSE_ACTIONS,
    DATAPLANES,
    DPD_ACTIONS,
    DYNAMIC_TS,
    EAP_METHODS,
    FRAGMENTATION_MODES,
    MAX_CHILD_SAS_LIMIT,
    MIN_PSK_LENGTH,
    MODES,
    MUTUAL_EAP_METHODS,
    OFFLOAD_MODES,
    RADIUS_POOL,
    REDIRECT_PHASES,
    ROUTE_BASED_NEEDS_KERNEL,
    STANDARD_ESP_PROPOSALS,
    STANDARD_IKE_PROPOSALS,
    START_ACTIONS,
    TRAP_NEEDS_KERNEL,
    TRAP_NEEDS_ONE_WORKER,
    AuthConfig,
    ChildSection,
    ConnectionSection,
    GatewayConfig,
    GatewaySettings,
    HooksConfig,
    PoolSection,
    RadiusConfig,
    RadiusServerConfig,
    Secret,
    XdpConfig,
    route_based_children,
    trap_actions,
)
from gateway.config.values import (
    expand_default,
    parse_addr,
    parse_duration,
    parse_listen,
    parse_proposal,
    parse_size,
    parse_ts,
    type_name,
)
from gateway.eap_secrets import EapSecrets, load_eap_secrets
from gateway.pools import AddressPool, check_disjoint, parse_addrs
from gateway.routing.interfaces import MAX_MTU, MIN_MTU, check_if_id, check_name
from gateway.routing.routes import LOCAL_TABLE, MAIN_TABLE
from gateway.secretfile import check_secret_file

T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------- reader


_MISSING: Any = object()
Path_ = tuple[str | int, ...]


def _fmt_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _Context:
    """Collects issues for one load; knows the line of each key and the file's folder."""

    def __init__(self, text: str, base_dir: Path) -> None:
        self.lines = key_lines(text)
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def line_of(self, path: Path_) -> int | None:
        keys = tuple(p for p in path if isinstance(p, str))
        while keys:
            if keys in self.lines:
                return self.lines[keys]
            keys = keys[:-1]
        return None

    def error(self, path: Path_, message: str) -> None:
        self.issues.append(ConfigIssue(_fmt_path(path), message, self.line_of(path)))

    def resolve(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.base_dir / path


class _Table:
    """A TOML table being read: typed getters that record errors and return defaults."""

    def __init__(self, ctx: _Context, path: Path_, data: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        self.seen: set[str] = set()

    def at(self, key: str | int) -> Path_:
        return self.path + (key,)

    def error(self, key: str | int, message: str) -> None:
        self.ctx.error(self.at(key), message)

    def has(self, key: str) -> bool:
        self.seen.add(key)
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, _MISSING)

    def get(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        value = self.raw(key)
        if value is _MISSING:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> Any:
        def convert(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type_name(value)}")
            if choices and value not in choices:
                raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
            return value

        return self.get(key, default, convert)

    def boolean(self, key: str, default: bool) -> bool:
        def convert(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
                return value.lower() in ("yes", "true")
            raise ValueError(f"expected true/false, got {value!r}")

        return self.get(key, default, convert)

    def integer(self, key: str, default: Any, low: int, high: int) -> Any:
        def convert(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {type_name(value)}")
            if not low <= value <= high:
                raise ValueError(f"{value} is out of range {low}..{high}")
            return value

        return self.get(key, default, convert)

    def duration(self, key: str, default: float) -> float:
        return self.get(key, default, parse_duration)

    def size(self, key: str, default: int) -> int:
        return self.get(key, default, parse_size)

    def strings(
        self, key: str, default: tuple[str, ...], item: Callable[[str], str] | None = None
    ) -> tuple[str, ...]:
        """A list of strings; like swanctl.conf, one string may hold a comma-separated list."""
        value = self.raw(key)
        if value is _MISSING:
            return default
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",")]
            indexed = False
        elif isinstance(value, list):
            items, indexed = value, True
        else:
            self.error(key, f"expected an array of strings, got {type_name(value)}")
            return default
        if not items or items == [""]:
            self.error(key, "must not be empty")
            return default
        out: list[str] = []
        ok = True
        for index, raw in enumerate(items):
            where: Path_ = (key, index) if indexed else (key,)
            if not isinstance(raw, str):
                self.ctx.error(self.path + where, f"expected a string, got {type_name(raw)}")
                ok = False
                continue
            try:
                out.append(item(raw) if item else raw)
            except ValueError as exc:
                self.ctx.error(self.path + where, str(exc))
                ok = False
        return tuple(out) if ok else default

    def table(self, key: str) -> _Table | None:
        value = self.raw(key)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {type_name(value)}")
            return None
        return _Table(self.ctx, self.at(key), value)

    def finish(self) -> None:
        """Report keys nobody asked for (typos), suggesting the closest known key."""
        for key in self.data:
            if key not in self.seen:
                close = difflib.get_close_matches(key, sorted(self.seen), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(key, f"unknown key{hint}")


# --------------------------------------------------------------------------- sections


def _read_gateway(ctx: _Context, root: _Table) -> GatewaySettings:
    defaults = GatewaySettings()
    table = root.table("gateway") or _Table(ctx, ("gateway",), {})
    listen = table.strings("listen", defaults.listen, _ip_address)
    port = table.integer("port", defaults.port, 0, 65535)
    port_nat_t = table.integer("port_nat_t", defaults.port_nat_t, 0, 65535)
    if port and port == port_nat_t:
        key = "port_nat_t" if "port_nat_t" in table.data else "port"
        table.error(key, f"port and port_nat_t must differ (both {port})")
    control_socket = table.string("control_socket", defaults.control_socket)
    if control_socket is not None and not control_socket:
        table.error("control_socket", "must not be empty")
    elif control_socket and len(os.fsencode(control_socket)) >= 108:
        table.error("control_socket", "path too long for a unix socket (max 107 bytes)")
    metrics_listen = table.get("metrics_listen", defaults.metrics_listen, _listen_value)
    metrics_aggregate = table.string(
        "metrics_aggregate", defaults.metrics_aggregate, ("child", "connection")
    )
    dataplane = table.string("dataplane", defaults.dataplane, DATAPLANES)
    workers = table.integer("workers", defaults.workers, 1, 64)
    log_level = table.string("log_level", defaults.log_level, ("debug", "info", "warning", "error"))
    retransmit_timeout = table.duration("retransmit_timeout", defaults.retransmit_timeout)
    if "retransmit_timeout" in table.data and retransmit_timeout <= 0:
        table.error("retransmit_timeout", "must be more than 0")
    retransmit_base = table.get("retransmit_base", defaults.retransmit_base, _retransmit_base)
    retransmit_tries = table.integer("retransmit_tries", defaults.retransmit_tries, 0, 30)
    eap_secrets = table.get("eap_secrets", None, lambda v: _secret_file(ctx, v, "EAP secrets"))
    radius = _read_radius(ctx, table)
    xdp_table = table.table("xdp")
    xdp = _read_xdp(xdp_table) if xdp_table is not None else None
    counters_interval = table.duration("counters_interval", defaults.counters_interval)
    if "counters_interval" in table.data and not 0 <= counters_interval <= 3600:
        table.error("counters_interval", "must be 0 (read at every scrape) up to 1h")
    hooks = defaults.hooks
    hooks_table = table.table("hooks")
    if hooks_table is not None:
        hooks = HooksConfig(
            timeout=hooks_table.duration("timeout", hooks.timeout),
            max_concurrent=hooks_table.integer("max_concurrent", hooks.max_concurrent, 1, 256),
            max_output_lines=hooks_table.integer(
                "max_output_lines", hooks.max_output_lines, 0, 10000
            ),
        )
        if hooks.timeout <= 0:
            hooks_table.error("timeout", "must be more than 0")
        hooks_table.finish()
    table.finish()
    return GatewaySettings(
        listen=listen,
        port=port,
        port_nat_t=port_nat_t,
        control_socket=control_socket,
        metrics_listen=metrics_listen,
        metrics_aggregate=metrics_aggregate,
        dataplane=dataplane,
        workers=workers,
        log_level=log_level,
        xdp=xdp,
        hooks=hooks,
        counters_interval=counters_interval,
        retransmit_timeout=retransmit_timeout,
        retransmit_base=retransmit_base,
        retransmit_tries=retransmit_tries,
        eap_secrets=eap_secrets,
        radius=radius,
    )


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be more than 0")
    return seconds


def _read_radius(ctx: _Context, gateway: _Table) -> RadiusConfig | None:
    """`[gateway.radius]` and its `servers.NAME` tables (strongswan.conf eap-radius)."""
    table = gateway.table("radius")
    if table is None:
        return None
    d = RadiusConfig()
    servers: list[RadiusServerConfig] = []
    raw = table.raw("servers")
    if not isinstance(raw, dict) or not raw:
        table.error("servers", "needs at least one [gateway.radius.servers.NAME] table")
        raw = {}
    for name, data in raw.items():
        server = _read_radius_server(ctx, table, name, data)
        if server is not None:
            servers.append(server)
    timeout = table.duration("retransmit_timeout", d.retransmit_timeout)
    if "retransmit_timeout" in table.data and timeout <= 0:
        table.error("retransmit_timeout", "must be more than 0")
    nas = table.string("nas_identifier", d.nas_identifier)
    if not nas:
        table.error("nas_identifier", "must not be empty")
    radius = RadiusConfig(
        servers=tuple(servers),
        nas_identifier=nas or d.nas_identifier,
        retransmit_timeout=timeout,
        retransmit_base=table.get("retransmit_base", d.retransmit_base, _retransmit_base),
        retransmit_tries=table.integer("retransmit_tries", d.retransmit_tries, 1, 30),
    )
    table.finish()
    return radius


def _read_radius_server(
    ctx: _Context, radius: _Table, name: str, data: Any
) -> RadiusServerConfig | None:
    path = radius.path + ("servers", name)
    if not isinstance(data, dict):
        ctx.error(path, f"expected a table, got {type_name(data)}")
        return None
    table = _Table(ctx, path, data)
    address = table.get("address", None, _ip_address_value)
    if "address" not in data:
        table.error("address", "missing: the server's IP address")
    port = table.integer("port", RadiusServerConfig.__dataclass_fields__["port"].default, 1, 65535)
    secret: Secret | None = None
    if ("secret" in data) == ("secret_file" in data):
        table.error("secret", "set either secret or secret_file (the RADIUS shared secret)")
    elif "secret" in data:
        value = table.raw("secret")
        if not isinstance(value, str) or not value:
            table.error("secret", "expected a non-empty string")
        else:
            secret = Secret(value.encode())
    else:
        file = table.get("secret_file", None, lambda v: _secret_file(ctx, v, "RADIUS secret"))
        if file is not None:
            value_bytes = Path(file).read_bytes().strip()
            if value_bytes:
                secret = Secret(value_bytes)
            else:
                table.error("secret_file", "the file is empty")
    table.seen.update(("secret", "secret_file"))
    table.finish()
    if address is None or secret is None:
        return None
    return RadiusServerConfig(name=name, address=address, secret=secret, port=port)


def _ip_address_value(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {type_name(value)}")
    return _ip_address(value)


def _read_pools(ctx: _Context, root: _Table) -> tuple[PoolSection, ...]:
    """`[pools.NAME]` (swanctl.conf pools): addrs and dns; pools must not overlap."""
    raw = root.raw("pools")
    if raw is _MISSING:
        return ()
    if not isinstance(raw, dict):
        root.error("pools", f"expected a table, got {type_name(raw)}")
        return ()
    out: list[PoolSection] = []
    for name, data in raw.items():
        path: Path_ = ("pools", name)
        if not isinstance(data, dict):
            ctx.error(path, f"expected a table, got {type_name(data)}")
            continue
        if not _NAME_RE.match(name) or name == RADIUS_POOL:
            ctx.error(path, f"pool names use letters, digits, '_' and '-' (not {RADIUS_POOL!r})")
        table = _Table(ctx, path, data)

        def addrs_value(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError(f"expected a subnet, range or address, got {type_name(value)}")
            parse_addrs(value)
            return value.strip()

        addrs = table.get("addrs", None, addrs_value)
        if "addrs" not in data:
            table.error("addrs", 'missing: e.g. "10.3.0.0/24" or "10.3.0.10-10.3.0.99"')
        dns = table.strings("dns", (), _ip_address)
        table.finish()
        if addrs is not None:
            out.append(PoolSection(name=name, addrs=addrs, dns=dns))
    try:
        check_disjoint(AddressPool(p.name, p.addrs) for p in out)
    except ValueError as exc:
        ctx.error(("pools",), str(exc))
    return tuple(out)


def _read_xdp(t: _Table) -> XdpConfig:
    d = XdpConfig()
    if not {"wan_interface", "lan_interface"} & t.data.keys():
        t.ctx.error(t.path, "needs wan_interface and/or lan_interface")
    rate = t.get("ike_init_rate", d.ike_init_rate, _rate)
    budget = t.get("ike_init_budget", d.ike_init_budget, _rate)
    burst = t.integer("ike_init_burst", d.ike_init_burst, 1, 1 << 20)
    budget_burst = t.integer("ike_init_budget_burst", d.ike_init_budget_burst, 1, 1 << 24)
    for burst_key, rate_key, value in (
        ("ike_init_burst", "ike_init_rate", rate),
        ("ike_init_budget_burst", "ike_init_budget", budget),
    ):
        if burst_key in t.data and value is None:
            t.error(burst_key, f"needs {rate_key}")
    xdp = XdpConfig(
        wan_interface=t.get("wan_interface", d.wan_interface, _ifname),
        lan_interface=t.get("lan_interface", d.lan_interface, _ifname),
        mss_clamp=t.get("mss_clamp", d.mss_clamp, _mss),
        steer_cpus=t.get("steer_cpus", d.steer_cpus, _cpu_set),
        drop_unknown_spi=t.boolean("drop_unknown_spi", d.drop_unknown_spi),
        ike_init_rate=rate,
        ike_init_burst=burst,
        ike_init_budget=budget,
        ike_init_budget_burst=budget_burst,
        max_child_sas=t.integer("max_child_sas", d.max_child_sas, 2, MAX_CHILD_SAS_LIMIT),
    )
    if (rate is not None or budget is not None) and xdp.wan_interface is None:
        key = "ike_init_rate" if rate is not None else "ike_init_budget"
        t.error(key, "the IKE_SA_INIT shield runs on the WAN side: needs wan_interface")
    for key in ("steer_cpus", "drop_unknown_spi"):
        if key in t.data and xdp.wan_interface is None:
            t.error(key, "works on ESP arriving on the WAN side: needs wan_interface")
    t.finish()
    return xdp


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected requests per second (a number), got {type_name(value)}")
    if not 0 < value <= 10_000_000:
        raise ValueError(f"{value} is out of range (0, 10000000]")
    return float(value)


def _cpu_set(value: Any) -> tuple[int, ...] | str:
    if value == "all":
        return "all"
    if not isinstance(value, list) or not value:
        raise ValueError(f'expected a list of CPU numbers or "all", got {value!r}')
    cpus: list[int] = []
    for cpu in value:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < 4096:
            raise ValueError(f"{cpu!r} is not a CPU number (0-4095)")
        if cpu in cpus:
            raise ValueError(f"CPU {cpu} is listed twice")
        cpus.append(cpu)
    return tuple(cpus)


def _retransmit_base(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type_name(value)}")
    if not 1.0 <= value <= 10.0:
        raise ValueError(f"{value} is out of range 1.0..10.0")
    return float(value)


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _listen_value(value: Any) -> tuple[str, int] | None:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "127.0.0.1:9810", got {type_name(value)}')
    return parse_listen(value)


def _ifname(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an interface name, got {type_name(value)}")
    if not 0 < len(value) < 16 or "/" in value or value.strip() != value:
        raise ValueError(f"{value!r} is not a valid interface name")
    return value


def _mark(value: Any) -> int:
    """A mark: an integer or a string ("0x64", "100"), 1..0xffffffff (no mask: the
    whole mark is set)."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value, 0)
        except ValueError:
            raise ValueError(f"{value!r} is not a mark (an integer, e.g. 0x64)") from None
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"expected a mark (an integer, e.g. 0x64), got {type_name(value)}")
    if not 0 < number <= 0xFFFFFFFF:
        raise ValueError(f"{value!r} is out of range 1..0xffffffff")
    return number


def _mss(value: Any) -> int | bool | None:
    if value is False:
        return None
    if value is True:
        return True
    if not isinstance(value, int):
        raise ValueError(
            f"expected true (derive from the tunnel MTU), an MSS in bytes (536-9000) "
            f"or false, got {value!r}"
        )
    if not 536 <= value <= 9000:
        raise ValueError(f"{value} is out of range 536..9000")
    return value


def _read_auth(ctx: _Context, conn: _Table, key: str) -> AuthConfig:
    table = conn.table(key)
    words = '"psk", "pubkey" or an EAP method (' + ", ".join(EAP_METHODS) + ")"
    if table is None:
        if not conn.has(key):
            conn.error(key, f"missing: needs at least auth = {words}")
        return AuthConfig()
    auth = table.string("auth", None, AUTH_METHODS)
    if "auth" not in table.data:
        table.error("auth", f"missing: {words}")
    ident = table.string("id", None)
    if ident is not None and not ident.strip():
        table.error("id", "must not be empty")
    certs = table.strings("certs", (), lambda v: _readable_file(ctx, v))
    cacerts = table.strings("cacerts", (), lambda v: _readable_file(ctx, v))
    keyfile = table.get("key", None, lambda v: _secret_file(ctx, v, "key"))
    crls = table.strings("crls", (), lambda v: _readable_file(ctx, v))
    eap_id = table.string("eap_id", None)
    if eap_id is not None and not eap_id.strip():
        table.error("eap_id", "must not be empty (%any: any EAP identity)")
    if key == "remote" and keyfile is not None:
        table.error("key", "a private key belongs to local, not remote")
    if key == "local" and crls:
        table.error("crls", "revocation lists check the peer: they belong to remote")
    if eap_id is not None and auth not in EAP_METHODS:
        table.error("eap_id", "is only used with an EAP method (auth = eap-...)")
    if auth in ("pubkey", "eap-tls"):
        if key == "local":
            if not certs:
                table.error("certs", f"{auth} authentication needs our certificate file(s)")
            if keyfile is None and "key" not in table.data:
                table.error("key", f"{auth} authentication needs our private key file")
        elif not {"certs", "cacerts"} & table.data.keys():
            table.error("cacerts", f"{auth} authentication needs cacerts (or the peer's certs)")
    elif auth == "psk" or auth in ("eap-mschapv2", "eap-radius"):
        for unused in ("certs", "key", "crls"):
            if table.data.get(unused):
                table.error(unused, 'is only used with auth = "pubkey" or "eap-tls"')
    if key == "local" and auth == "eap-radius":
        table.error("auth", "eap-radius relays the peer's EAP: it belongs to remote")
    table.finish()
    return AuthConfig(
        auth=auth or "psk",
        id=ident,
        certs=certs,
        cacerts=cacerts,
        key=keyfile,
        crls=crls,
        eap_id=eap_id,
    )


def _readable_file(ctx: _Context, value: str) -> str:
    path = ctx.resolve(value)
    if not path.is_file():
        raise ValueError(f"{value!r}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{value!r}: not readable")
    return str(path)


def _secret_file(ctx: _Context, value: Any, what: str) -> str:
    """A file holding a secret: must exist and be readable by its owner (root or us) only."""
    if not isinstance(value, str):
        raise ValueError(f"expected a file name, got {type_name(value)}")
    path = ctx.resolve(value)
    check_secret_file(path, what, value)
    return str(path)


def _read_psk(ctx: _Context, conn: _Table, needs_psk: bool) -> Secret | None:
    psk: Secret | None = None
    has_psk, has_file = "psk" in conn.data, "psk_file" in conn.data
    if has_psk and has_file:
        conn.error("psk_file", "set either psk or psk_file, not both")
    if has_psk:
        value = conn.raw("psk")
        if not isinstance(value, str):
            conn.error("psk", f"expected a string, got {type_name(value)}")
        else:
            psk = _check_psk(conn, "psk", value.encode())
    elif has_file:
        name = conn.get("psk_file", None, lambda v: _secret_file(ctx, v, "psk"))
        if name is not None:
            data = Path(name).read_bytes().strip()
            psk = _check_psk(conn, "psk_file", data)
    conn.seen.update(("psk", "psk_file"))
    if needs_psk and psk is None and not has_psk and not has_file:
        conn.error("psk", 'auth = "psk" needs psk or psk_file')
    return psk


def _check_psk(conn: _Table, key: str, value: bytes) -> Secret | None:
    # The message never contains the secret itself.
    if len(value) < MIN_PSK_LENGTH:
        conn.error(key, f"pre-shared key too short ({len(value)} bytes; at least {MIN_PSK_LENGTH})")
        return None
    return Secret(value)


def _read_child(
    ctx: _Context, conn: _Table, name: str, data: Any, defaults: ChildSection
) -> ChildSection:
    path = conn.path + ("children", name)
    if not isinstance(data, dict):
        ctx.error(path, f"expected a table, got {type_name(data)}")
        return ChildSection(name=name)
    if not _NAME_RE.match(name):
        ctx.error(path, "child names use letters, digits, '_' and '-' only")
    table = _Table(ctx, path, data)
    d = ChildSection(name=name)
    rekey_time = table.duration("rekey_time", d.rekey_time)
    life_time = table.duration("life_time", rekey_time * 1.1)
    rand_time = table.duration("rand_time", life_time - rekey_time)
    if rekey_time and life_time and life_time <= rekey_time and "life_time" in data:
        table.error("life_time", f"must be longer than rekey_time ({rekey_time:g}s)")
    if rekey_time and "rand_time" in data and rand_time >= rekey_time:
        table.error("rand_time", f"must be shorter than rekey_time ({rekey_time:g}s)")
    rekey_bytes = table.size("rekey_bytes", d.rekey_bytes)
    life_bytes = table.size("life_bytes", int(rekey_bytes * 1.1))
    rekey_packets = table.size("rekey_packets", d.rekey_packets)
    life_packets = table.size("life_packets", int(rekey_packets * 1.1))
    for soft, hard, soft_value, hard_value in (
        ("rekey_bytes", "life_bytes", rekey_bytes, life_bytes),
        ("rekey_packets", "life_packets", rekey_packets, life_packets),
    ):
        if hard in data and soft_value and hard_value and hard_value <= soft_value:
            table.error(hard, f"must be larger than {soft} ({soft_value})")
    child = ChildSection(
        name=name,
        local_ts=table.strings("local_ts", d.local_ts, parse_ts),
        remote_ts=table.strings("remote_ts", d.remote_ts, parse_ts),
        esp_proposals=expand_default(
            table.strings("esp_proposals", d.esp_proposals, lambda v: parse_proposal(v, esp=True)),
            STANDARD_ESP_PROPOSALS,
        ),
        mode=table.string("mode", d.mode, MODES),
        start_action=table.string("start_action", d.start_action, START_ACTIONS),
        dpd_action=table.string("dpd_action", d.dpd_action, DPD_ACTIONS),
        close_action=table.string("close_action", d.close_action, CLOSE_ACTIONS),
        rekey_time=rekey_time,
        life_time=life_time,
        rand_time=rand_time,
        rekey_bytes=rekey_bytes,
        life_bytes=life_bytes,
        rekey_packets=rekey_packets,
        life_packets=life_packets,
        offload=table.string("offload", defaults.offload, OFFLOAD_MODES),
        offload_interface=table.get("offload_interface", defaults.offload_interface, _ifname),
        set_mark_out=table.get("set_mark_out", d.set_mark_out, _mark),
        replay_window=table.integer("replay_window", d.replay_window, 0, 1 << 20),
        **_read_route_based(ctx, table, d),
    )
    if child.mode == "transport":
        for key in ("local_ts", "remote_ts"):
            for ts in getattr(child, key):
                if ts != DYNAMIC_TS and ipaddress.ip_network(ts).num_addresses != 1:
                    table.error(key, f"transport mode protects single hosts, not {ts}")
    table.finish()
    return child


def _read_route_based(ctx: _Context, table: _Table, d: ChildSection) -> dict[str, Any]:
    """A child's route-based keys (if_id, interface, routes) and its updown program."""
    if_id_in = table.get("if_id_in", d.if_id_in, _if_id)
    if_id_out = table.get("if_id_out", d.if_id_out, _if_id)
    if table.has("if_id"):  # our shorthand: one if_id for both directions
        if {"if_id_in", "if_id_out"} & table.data.keys():
            table.error("if_id", "set either if_id or if_id_in/if_id_out, not both")
        if_id_in = if_id_out = table.get("if_id", None, _if_id)
    if (if_id_in is None) != (if_id_out is None):
        key = "if_id_in" if if_id_in is None else "if_id_out"
        table.error(key, "set if_id_in and if_id_out together (or if_id for both)")
    interface = table.get("interface", d.interface, _xfrm_ifname)
    out: dict[str, Any] = {
        "if_id_in": if_id_in,
        "if_id_out": if_id_out,
        "interface": interface,
        "interface_mtu": table.get("interface_mtu", d.interface_mtu, _interface_mtu),
        "interface_addresses": table.strings(
            "interface_addresses", d.interface_addresses, _interface_address
        ),
        "routes": table.strings("routes", (), _route) if table.has("routes") else d.routes,
        "route_table": table.get("route_table", d.route_table, _route_table),
        "route_metric": table.integer("route_metric", d.route_metric, 0, 0xFFFFFFFF),
        "updown": table.get("updown", d.updown, lambda v: _program(ctx, v)),
        "updown_rekey": table.boolean("updown_rekey", d.updown_rekey),
    }
    if interface is not None:
        if if_id_in is None:
            table.error(
                "interface", "a route-based child needs if_id (its SAs' and the interface's)"
            )
        elif if_id_in != if_id_out:
            table.error(
                "interface",
                f"the interface has one if_id: if_id_in ({if_id_in}) and if_id_out "
                f"({if_id_out}) must be equal (distinct ones are for interfaces made outside "
                "the gateway: leave interface out)",
            )
    else:
        for key in (
            "interface_mtu",
            "interface_addresses",
            "routes",
            "route_table",
            "route_metric",
        ):
            if key in table.data:
                table.error(key, "needs interface (a route-based child)")
    return out


def _if_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer 1..4294967295, got {type_name(value)}")
    check_if_id(value)
    return value


def _xfrm_ifname(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an interface name, got {type_name(value)}")
    check_name(value)
    return value


def _interface_mtu(value: Any) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected "auto" or an MTU in bytes, got {value!r}')
    if not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"{value} is out of range {MIN_MTU}..{MAX_MTU}")
    return value


def _interface_address(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with a prefix (169.254.10.1/30)") from None


def _route(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"{value!r} has host bits set (did you mean the network?)") from None
        raise ValueError(f"{value!r} is not a network (CIDR)") from None


def _route_table(value: Any) -> int:
    if value == "main":
        return MAIN_TABLE
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected "main" or a table number, got {value!r}')
    if not 1 <= value <= 0xFFFFFFFF or value == LOCAL_TABLE:
        raise ValueError(f"{value} is not a usable table (1..4294967295, not {LOCAL_TABLE})")
    return value


def _program(ctx: _Context, value: Any) -> str:
    """An updown command line: its program must be an executable file."""
    import shlex

    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a command line (a program and its arguments)")
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r}: {exc}") from None
    path = ctx.resolve(argv[0])
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ValueError(f"{argv[0]!r}: no such executable file")
    return shlex.join([str(path), *argv[1:]])


def _check_route_based(ctx: _Context, dataplane: str, connections: list[ConnectionSection]) -> None:
    """Route-based children across the whole configuration: one if_id per interface and
    one interface per if_id, no two routes with one key, no route over a peer's address."""
    by_name: dict[str, int] = {}
    by_if_id: dict[int, str] = {}
    seen_routes: dict[tuple[str, int, int], str] = {}
    for conn, child in route_based_children(connections):
        path = ("connections", conn.name, "children", child.name)
        if dataplane == "none":
            ctx.error(path + ("interface",), ROUTE_BASED_NEEDS_KERNEL)
        name, if_id = child.interface, child.if_id_in
        assert name is not None
        if if_id is None:
            continue
        if by_name.setdefault(name, if_id) != if_id:
            ctx.error(path + ("if_id",), f"{name} has if_id {by_name[name]} elsewhere")
        if by_if_id.setdefault(if_id, name) != name:
            ctx.error(
                path + ("interface",), f"if_id {if_id} belongs to {by_if_id[if_id]} elsewhere"
            )
        peers = [ipaddress.ip_address(a) for a in conn.remote_addrs if _is_ip(a)]
        for prefix in child.route_prefixes:
            net = ipaddress.ip_network(prefix)
            for peer in peers:
                if peer.version == net.version and peer in net:
                    ctx.error(
                        path + ("routes",),
                        f"{prefix} covers the peer {peer}: IKE and ESP to the peer would be "
                        "routed into the peer's own tunnel (a loop)",
                    )
            key = (prefix, child.route_table, child.route_metric)
            other = seen_routes.setdefault(key, name)
            if other != name:
                ctx.error(
                    path + ("route_metric",),
                    f"{prefix} in table {child.route_table} with metric {child.route_metric} "
                    f"is routed into {other} too: give one of them another route_metric",
                )


def _read_connection(ctx: _Context, name: str, data: Any) -> ConnectionSection:
    path: Path_ = ("connections", name)
    if not isinstance(data, dict):
        ctx.error(path, f"expected a table, got {type_name(data)}")
        return ConnectionSection(name=name)
    if not _NAME_RE.match(name):
        ctx.error(path, "connection names use letters, digits, '_' and '-' only")
    conn = _Table(ctx, path, data)
    d = ConnectionSection(name=name)
    local_addrs = conn.strings("local_addrs", d.local_addrs, parse_addr)
    remote_addrs = conn.strings("remote_addrs", d.remote_addrs, parse_addr)
    local = _read_auth(ctx, conn, "local")
    remote = _read_auth(ctx, conn, "remote")
    given_auth = [
        section.get("auth")
        for section in (data.get("local"), data.get("remote"))
        if isinstance(section, dict)
    ]
    needs_psk = "psk" in given_auth
    psk = _read_psk(ctx, conn, needs_psk)
    if psk is not None and not needs_psk:
        conn.error("psk", 'set, but neither local nor remote uses auth = "psk"')
    rekey_time = conn.duration("rekey_time", d.rekey_time)
    reauth_time = conn.duration("reauth_time", d.reauth_time)
    # swanctl: 10% of the longer of rekey_time and reauth_time
    over_time = conn.duration("over_time", max(rekey_time, reauth_time) * 0.1)
    rand_time = conn.duration("rand_time", over_time)
    if "jitter" in data:  # our name for rand_time, as the issue tracker calls it
        if "rand_time" in data:
            conn.error("jitter", "set either rand_time or jitter (same setting), not both")
        rand_time = conn.duration("jitter", rand_time)
    conn.seen.add("jitter")
    if rekey_time and {"rand_time", "jitter"} & data.keys() and rand_time >= rekey_time:
        conn.error("rand_time", f"must be shorter than rekey_time ({rekey_time:g}s)")
    child_defaults = ChildSection(  # the connection's defaults for its children
        name="",
        offload=conn.string("offload", ChildSection(name="").offload, OFFLOAD_MODES),
        offload_interface=conn.get("offload_interface", None, _ifname),
    )
    children_raw = conn.raw("children")
    children: list[ChildSection] = []
    if children_raw is not _MISSING:
        if not isinstance(children_raw, dict):
            conn.error("children", f"expected a table, got {type_name(children_raw)}")
        else:
            children = [
                _read_child(ctx, conn, child_name, child_data, child_defaults)
                for child_name, child_data in children_raw.items()
            ]
    connection = ConnectionSection(
        name=name,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        local_port=conn.integer("local_port", d.local_port, 1, 65535),
        remote_port=conn.integer("remote_port", d.remote_port, 1, 65535),
        local=local,
        remote=remote,
        psk=psk,
        ike_proposals=expand_default(
            conn.strings("ike_proposals", d.ike_proposals, lambda v: parse_proposal(v, esp=False)),
            STANDARD_IKE_PROPOSALS,
        ),
        dpd_delay=conn.duration("dpd_delay", d.dpd_delay),
        dpd_timeout=conn.duration("dpd_timeout", d.dpd_timeout),
        retransmit_timeout=conn.get("retransmit_timeout", d.retransmit_timeout, _positive_duration),
        retransmit_base=conn.get("retransmit_base", d.retransmit_base, _retransmit_base),
        retransmit_tries=conn.integer("retransmit_tries", d.retransmit_tries, 0, 30),
        rekey_time=rekey_time,
        reauth_time=reauth_time,
        over_time=over_time,
        rand_time=rand_time,
        mobike=conn.boolean("mobike", d.mobike),
        follow_redirects=conn.boolean("follow_redirects", d.follow_redirects),
        redirect_to=conn.get("redirect_to", d.redirect_to, _gateway_identity),
        redirect_on=conn.string("redirect_on", d.redirect_on, REDIRECT_PHASES),
        fragmentation=conn.get("fragmentation", d.fragmentation, _fragmentation),
        encap=conn.boolean("encap", d.encap),
        keyingtries=conn.integer("keyingtries", d.keyingtries, 0, 1000),
        pools=conn.strings("pools", d.pools),
        vips=conn.strings("vips", d.vips, _ip_address),
        children=tuple(children),
    )
    _check_connection(conn, connection)
    conn.finish()
    return connection


def _gateway_identity(value: Any) -> str:
    """A gateway to redirect peers to (RFC 5685): an IPv4/IPv6 address or a host name."""
    from ike.config import check_gateway
    from ike.errors import LocalError

    if not isinstance(value, str):
        raise ValueError(f"expected an IP address or host name, got {type_name(value)}")
    try:
        return check_gateway(value)
    except LocalError as exc:
        raise ValueError(str(exc)) from None


def _fragmentation(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, str) and value in FRAGMENTATION_MODES:
        return value
    raise ValueError(f"{value!r} is not one of: {', '.join(FRAGMENTATION_MODES)}")


def _check_connection(conn: _Table, c: ConnectionSection) -> None:
    """Checks that span several keys of one connection."""
    concrete_remote = [a for a in c.remote_addrs if a != ANY_ADDR and "/" not in a]
    concrete_local = [a for a in c.local_addrs if a != ANY_ADDR and "/" not in a]
    for child in c.children:
        where = conn.path + ("children", child.name, "start_action")
        action = child.start_action
        if action in ("start", "trap") and not concrete_remote:
            conn.ctx.error(
                where, f"{action} needs a concrete address in remote_addrs to initiate to"
            )
        elif action in ("start", "trap") and not concrete_local:
            conn.ctx.error(
                where, f"{action} needs a concrete address in local_addrs to initiate from"
            )
    families = {ipaddress.ip_address(a).version for a in c.local_addrs if _is_ip(a)}
    remote_families = {ipaddress.ip_address(a).version for a in concrete_remote if _is_ip(a)}
    if families and remote_families and not families & remote_families:
        conn.error("remote_addrs", "no address family in common with local_addrs")
    _check_eap(conn, c)
    if c.pools and c.vips:
        conn.error("vips", "a connection hands out virtual IPs (pools) or asks for them, not both")
    if RADIUS_POOL in c.pools and c.remote.auth != "eap-radius":
        conn.error("pools", f'"{RADIUS_POOL}" takes the address RADIUS names: needs eap-radius')
    explicit = {"rand_time", "jitter"} & conn.data.keys()
    if c.reauth_time and explicit and c.rand_time >= c.reauth_time:
        conn.error(explicit.pop(), f"must be shorter than reauth_time ({c.reauth_time:g}s)")


def _check_eap(conn: _Table, c: ConnectionSection) -> None:
    """Which EAP combinations a connection can run (RFC 7296 §2.16, RFC 5998)."""
    local, remote = c.local.auth, c.remote.auth
    both = local in EAP_METHODS and remote in EAP_METHODS
    if both and (local != remote or remote not in MUTUAL_EAP_METHODS):
        conn.ctx.error(
            conn.at("remote") + ("auth",),
            "EAP on both sides is EAP-only authentication (RFC 5998): local and remote "
            "auth = eap-tls",
        )
    if remote == "eap-tls" and local == "psk":
        conn.ctx.error(
            conn.at("local") + ("auth",),
            'an EAP-TLS server needs its certificate: local auth = "pubkey" with certs and key',
        )
    if local == "eap-tls" and not c.remote.cacerts:
        conn.ctx.error(
            conn.at("remote") + ("cacerts",),
            "an EAP-TLS client checks the server's certificate: it needs cacerts",
        )


def _check_remote_access(
    ctx: _Context,
    gateway: GatewaySettings,
    pools: tuple[PoolSection, ...],
    connections: list[ConnectionSection],
) -> None:
    """What connections need of [gateway] and [pools]: the users file for EAP-MSCHAPv2
    (with our own secret, as a client), RADIUS servers for eap-radius, existing pools."""
    names = {p.name for p in pools}
    secrets: EapSecrets | None = None
    if gateway.eap_secrets is not None:
        try:
            secrets = load_eap_secrets(Path(gateway.eap_secrets))
        except ConfigError as exc:
            for issue in exc.issues:
                ctx.error(("gateway", "eap_secrets"), issue.format(exc.source))
    for c in connections:
        where: Path_ = ("connections", c.name)
        for pool in c.pools:
            if pool not in names and pool != RADIUS_POOL:
                ctx.error(where + ("pools",), f"no pool {pool!r} (define [pools.{pool}])")
        uses = {c.local.auth, c.remote.auth}
        if "eap-mschapv2" in uses and gateway.eap_secrets is None:
            side = "local" if c.local.auth == "eap-mschapv2" else "remote"
            ctx.error(
                where + (side, "auth"),
                "eap-mschapv2 needs the users file: [gateway] eap_secrets",
            )
        if c.remote.auth == "eap-radius" and gateway.radius is None:
            ctx.error(where + ("remote", "auth"), "eap-radius needs [gateway.radius] servers")
        if c.local.auth == "eap-mschapv2" and secrets is not None:
            me = c.local.eap_id or c.local.id
            if me is None:
                ctx.error(where + ("local", "eap_id"), "an EAP client needs eap_id (or id)")
            elif secrets.nt_hash(me.encode()) is None:
                ctx.error(
                    where + ("local", "eap_id"),
                    f"no secret for {me!r} in {gateway.eap_secrets}",
                )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- entry points


def parse_config(
    text: str, source: str = "<string>", base_dir: Path | None = None
) -> GatewayConfig:
    """Parse and check configuration text; raise ConfigError listing every problem."""
    data = toml_table(text, source)
    ctx = _Context(text, base_dir or Path.cwd())
    root = _Table(ctx, (), data)
    gateway = _read_gateway(ctx, root)
    connections: list[ConnectionSection] = []
    conns = root.raw("connections")
    if conns is not _MISSING:
        if not isinstance(conns, dict):
            root.error("connections", f"expected a table, got {type_name(conns)}")
        else:
            connections = [_read_connection(ctx, name, value) for name, value in conns.items()]
    pools = _read_pools(ctx, root)
    root.finish()
    _check_route_based(ctx, gateway.dataplane, connections)
    _check_remote_access(ctx, gateway, pools, connections)
    for conn, child, key in trap_actions(connections):
        path = ("connections", conn.name, "children", child.name, key)
        if gateway.dataplane == "none":
            ctx.error(path, TRAP_NEEDS_KERNEL)
        elif gateway.workers > 1:
            ctx.error(path, TRAP_NEEDS_ONE_WORKER)
    if ctx.issues:
        issues = sorted(ctx.issues, key=lambda i: (i.line is None, i.line or 0))
        raise ConfigError(source, issues)
    return GatewayConfig(
        gateway=gateway, connections=tuple(connections), source=source, pools=pools
    )


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check a configuration file; ConfigError (a GatewayError) on any problem."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(file), [ConfigIssue("", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = ConfigIssue("", f"not UTF-8 text (byte {exc.start})")
        raise ConfigError(str(file), [issue]) from None
    return parse_config(text, source=str(file), base_dir=file.resolve().parent)
