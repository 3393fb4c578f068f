"""The configuration of remote access: EAP words and eap_id, the users file, [gateway.radius],
[pools.NAME], pools/vips, reauth_time; each mistake reported at its key and line, no
secret in any message; and the connection as the IKE engine takes it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.engine import engine_connection
from gateway.config.reader import ConfigError, parse_config
from ike.config import compile_connection

USERS = '[secrets.eap-alice]\nid = "alice"\nsecret = "alice-password-1"\n'


def gateway(tmp: Path, extra: str = "") -> str:
    users = tmp / "users.toml"
    users.write_text(USERS)
    users.chmod(0o600)
    return f'[gateway]\neap_secrets = "{users}"\n{extra}\n'


RW = """
[pools.rw]
addrs = "10.3.0.0/24"
dns = ["10.3.0.53", "fd00::53"]
[pools.rw6]
addrs = "fd00:3::/120"

[connections.rw]
local_addrs = ["192.0.2.1"]
pools = ["rw", "rw6"]
reauth_time = "2h"
psk = "lab-secret-123456"
local = { auth = "psk", id = "vpn.example" }
remote = { auth = "eap-mschapv2", eap_id = "%any" }
[connections.rw.children.net]
local_ts = ["10.1.0.0/16"]
"""


def errors(text: str, tmp: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="t.toml", base_dir=tmp)
    for issue in info.value.issues:
        assert "alice-password-1" not in issue.message and "radius-secret" not in issue.message
    return [(i.path, i.message) for i in info.value.issues]


def test_a_road_warrior_gateway_reads_and_reaches_the_engine(tmp_path: Path) -> None:
    config = parse_config(gateway(tmp_path) + RW, base_dir=tmp_path)
    [rw] = config.connections
    assert [p.name for p in config.pools] == ["rw", "rw6"]
    assert config.pools[0].dns == ("10.3.0.53", "fd00::53")
    assert rw.remote.auth == "eap-mschapv2" and rw.remote.eap_id == "%any"
    assert rw.reauth_time == 7200.0 and rw.over_time == 1440.0  # 10% of the longer (4h)
    engine = engine_connection(rw)
    assert engine.pools == ("rw", "rw6") and engine.remote_eap_id == "%any"
    assert engine.reauth_time == 7200.0
    compile_connection(engine)


def test_an_eap_client_with_a_virtual_ip(tmp_path: Path) -> None:
    text = (
        gateway(tmp_path)
        + """
[connections.hub]
remote_addrs = ["192.0.2.1"]
vips = ["0.0.0.0", "::"]
psk = "lab-secret-123456"
local = { auth = "eap-mschapv2", id = "branch", eap_id = "alice" }
remote = { auth = "psk", id = "vpn.example" }
[connections.hub.children.net]
remote_ts = ["10.1.0.0/16"]
"""
    )
    [hub] = parse_config(text, base_dir=tmp_path).connections
    engine = engine_connection(hub)
    assert engine.vips == ("0.0.0.0", "::") and engine.local_eap_id == "alice"
    # our own secret must be in the users file
    assert errors(text.replace('eap_id = "alice"', 'eap_id = "carol"'), tmp_path) == [
        ("connections.hub.local.eap_id", f"no secret for 'carol' in {tmp_path / 'users.toml'}")
    ]


def test_mistakes_are_named_at_their_keys(tmp_path: Path) -> None:
    bad = RW.replace('pools = ["rw", "rw6"]', 'pools = ["rw", "nope", "radius"]')
    bad = bad.replace('eap_id = "%any"', 'eap_id = ""')
    bad += '\n[pools.overlap]\naddrs = "10.3.0.128/25"\n[pools.junk]\naddrs = "10.3.0.9-10.3.0.1"\n'
    found = errors(gateway(tmp_path) + bad, tmp_path)
    assert ("connections.rw.remote.eap_id", "must not be empty (%any: any EAP identity)") in found
    assert ("pools.junk.addrs", "'10.3.0.9-10.3.0.1' ends before it starts") in found
    assert ("pools", "pools overlap and rw overlap") in found or (
        "pools",
        "pools rw and overlap overlap",
    ) in found
    assert ("connections.rw.pools", "no pool 'nope' (define [pools.nope])") in found
    assert (
        "connections.rw.pools",
        '"radius" takes the address RADIUS names: needs eap-radius',
    ) in found


def test_what_each_method_needs(tmp_path: Path) -> None:
    # EAP-MSCHAPv2 without the users file, eap-radius without servers, eap-radius locally
    text = (
        RW.replace("eap-mschapv2", "eap-radius")
        + """
[connections.c]
remote_addrs = ["192.0.2.9"]
psk = "lab-secret-123456"
local = { auth = "eap-radius" }
remote = { auth = "psk" }
[connections.d]
remote = { auth = "eap-mschapv2" }
local = { auth = "psk" }
psk = "lab-secret-123456"
[connections.e]
remote = { auth = "eap-tls", cacerts = ["ca.pem"] }
local = { auth = "psk" }
psk = "lab-secret-123456"
"""
    )
    (tmp_path / "ca.pem").write_text("x")
    found = dict(errors("[gateway]\n" + text, tmp_path))
    assert found["connections.rw.remote.auth"] == "eap-radius needs [gateway.radius] servers"
    assert found["connections.c.local.auth"].startswith("eap-radius relays the peer's EAP")
    assert found["connections.d.remote.auth"] == (
        "eap-mschapv2 needs the users file: [gateway] eap_secrets"
    )
    assert found["connections.e.local.auth"].startswith("an EAP-TLS server needs its certificate")


def test_radius_servers_and_their_secret(tmp_path: Path) -> None:
    secret = tmp_path / "radius.secret"
    secret.write_text("radius-secret\n")
    secret.chmod(0o600)
    radius = f"""
[gateway.radius]
nas_identifier = "vpn-1"
retransmit_tries = 3
[gateway.radius.servers.main]
address = "192.0.2.5"
secret_file = "{secret}"
[gateway.radius.servers.backup]
address = "2001:db8::5"
port = 11812
secret = "radius-secret"
"""
    text = gateway(tmp_path, radius) + RW.replace("eap-mschapv2", "eap-radius")
    g = parse_config(text, base_dir=tmp_path).gateway
    assert g.radius is not None and g.radius.nas_identifier == "vpn-1"
    main, backup = g.radius.servers
    assert (main.name, main.address, main.port) == ("main", "192.0.2.5", 1812)
    assert main.secret.value == backup.secret.value == b"radius-secret"
    assert "radius-secret" not in repr(g)
    secret.chmod(0o644)
    assert [p for p, _ in errors(text, tmp_path)] == ["gateway.radius.servers.main.secret_file"]
    assert [p for p, _ in errors(text.replace('address = "192.0.2.5"\n', ""), tmp_path)][:1] == [
        "gateway.radius.servers.main.address"
    ]


def test_reauth_time_and_an_explicit_jitter(tmp_path: Path) -> None:
    text = gateway(tmp_path) + RW.replace(
        'reauth_time = "2h"', 'reauth_time = "2h"\nrand_time = "3h"'
    )
    found = errors(text, tmp_path)
    assert ("connections.rw.rand_time", "must be shorter than reauth_time (7200s)") in found


def test_a_broken_users_file_is_a_config_error(tmp_path: Path) -> None:
    text = gateway(tmp_path) + RW
    (tmp_path / "users.toml").write_text('[secrets.eap-alice]\nid = "alice"\n')
    [(path, message)] = errors(text, tmp_path)
    assert path == "gateway.eap_secrets" and "needs secret" in message
