"""`gateway lab up --roadwarrior`'s parts that need no kernel: gw-west's road-warrior
config as the lab writes it (with the users file the lab writes) reads clean, the road
warrior's swanctl.conf says what strongSwan needs, and --roadwarrior brings its own peer.
The lab itself runs in the kernel layer (tests/kernel/test_lab.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.config.reader import parse_config
from gateway.lab.cli import register
from gateway.lab.local import RW_PASSWORD, RW_USER, LabError, LabOptions, gateway_config
from gateway.lab.strongswan import RoadWarrior


def test_gw_west_serves_road_warriors(tmp_path: Path) -> None:
    opts = LabOptions(peer="roadwarrior", xdp=False, directory=tmp_path)
    (tmp_path / "gw-west").mkdir()
    users = tmp_path / "gw-west" / "eap-secrets.toml"
    users.write_text(f'[secrets.eap-{RW_USER}]\nid = "{RW_USER}"\nsecret = "{RW_PASSWORD}"\n')
    users.chmod(0o600)
    config = parse_config(gateway_config("gw-west", opts), "gw-west.toml", tmp_path)
    [rw] = config.connections
    assert rw.remote.auth == "eap-mschapv2" and rw.pools == ("rw",)
    assert config.gateway.eap_secrets == str(users)
    assert config.gateway.control_socket == str(tmp_path / "gw-west" / "control.sock")
    # site to site, gw-west is the ordinary initiator
    site = parse_config(gateway_config("gw-west", LabOptions(directory=tmp_path)), "w.toml")
    assert [c.name for c in site.connections] == ["east"]


def test_the_road_warriors_swanctl_conf() -> None:
    text = RoadWarrior(
        "198.51.100.2", "gw-west", "alice", password="pw", gateway_psk="psk-1", start_action="start"
    ).swanctl()
    for line in (
        "remote_addrs = 198.51.100.2",
        "vips = 0.0.0.0",
        "auth = eap-mschapv2",
        "eap_id = alice",
        "auth = psk",
        "start_action = start",
        'secret = "pw"',
    ):
        assert line in text, text


def test_roadwarrior_brings_its_own_peer() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["lab", "up", "--roadwarrior"])
    assert args.func.__name__ == "cmd_up"
    from gateway.lab import cli

    assert cli.lab_options(args).peer == "roadwarrior"
    with pytest.raises(LabError, match="--roadwarrior"):
        cli.lab_options(parser.parse_args(["lab", "up", "--roadwarrior", "--nat"]))
