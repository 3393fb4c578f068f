"""The daemon's side of certificate authentication: TOML `local`/`remote` pubkey keys ->
the engine's connection config (file bytes read here, never in ike/), clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.engine import check_engine_config, engine_connection
from gateway.config.reader import ConfigError, parse_config
from gateway.errors import GatewayError
from ike.config import compile_connection
from ike.constants import IdType
from tests.support.pki import make_ca, make_crl, make_leaf

CONF = """
[connections.east]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "pubkey", id = "@west.example", certs = ["west.pem"], key = "west.key" }}
remote = {{ auth = "pubkey", id = "@east.example", cacerts = ["ca.pem"]{crls} }}

[connections.east.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = make_ca("Daemon Test CA")
    west = make_leaf(ca, "west.example", dns=("west.example",))
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "west.pem").write_bytes(west.pem)
    key = tmp_path / "west.key"
    key.write_bytes(west.key_pem)
    key.chmod(0o600)
    (tmp_path / "ca.crl").write_bytes(make_crl(ca, ()))
    return tmp_path


def test_pubkey_connection_reaches_the_engine(files: Path) -> None:
    config = parse_config(CONF.format(crls=', crls = ["ca.crl"]'), base_dir=files)
    check_engine_config(config)
    conf = engine_connection(config.connections[0])
    assert (conf.local_auth, conf.remote_auth) == ("pubkey", "pubkey")
    assert len(conf.certs) == 1 and len(conf.cacerts) == 1 and len(conf.crls) == 1
    assert conf.private_key == (files / "west.key").read_bytes()
    assert conf.psk == b"" and "PRIVATE" not in repr(conf)
    compiled = compile_connection(conf)
    assert compiled.credential is not None and compiled.trust is not None
    assert len(compiled.trust.crls) == 1
    assert compiled.local_id == (IdType.ID_FQDN, b"west.example")


def test_pubkey_errors_are_clear(files: Path) -> None:
    # a CRL belongs to remote; a file that vanished after parsing; a key of another cert
    with pytest.raises(ConfigError) as exc:
        parse_config(
            CONF.format(crls="").replace('key = "west.key"', 'key = "west.key", crls = ["ca.crl"]'),
            base_dir=files,
        )
    assert [i.path for i in exc.value.issues] == ["connections.east.local.crls"]
    config = parse_config(CONF.format(crls=""), base_dir=files)
    (files / "ca.pem").rename(files / "gone.pem")
    with pytest.raises(GatewayError, match="cannot read .*ca.pem"):
        check_engine_config(config)
    (files / "gone.pem").rename(files / "ca.pem")
    other = make_leaf(make_ca("Other"), "x.example")
    (files / "west.key").write_bytes(other.key_pem)
    with pytest.raises(GatewayError, match="does not belong") as exc2:
        check_engine_config(config)
    assert "PRIVATE" not in str(exc2.value)
