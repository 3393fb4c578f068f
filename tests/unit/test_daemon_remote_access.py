"""Remote access through two daemons joined in memory (real engines, recording `none`
data planes): a branch that authenticates with EAP-MSCHAPv2 and asks for a virtual IP,
a hub with an address pool. The leases in list-sas, stats and the metrics snapshot; the
address released when the IKE SA goes; a wrong password counted and never logged;
reauthentication make-before-break (the data plane's replace, switch and retire); a
reload that re-reads the users file and keeps the leases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.reader import parse_config
from gateway.daemon import Daemon
from gateway.daemon import core as daemon_core
from tests.support.fake_engine import RecordingDataplane
from tests.support.inmemory import link_in_memory, until

PASSWORD = "correct-horse-battery"
HUB, BRANCH = "127.0.0.1", "127.0.0.2"


def users_file(path: Path, password: str = PASSWORD) -> Path:
    path.write_text(f'[secrets.eap-branch]\nid = "branch-17"\nsecret = "{password}"\n')
    path.chmod(0o600)
    return path


def gateway_section(listen: str, sock: Path, users: Path) -> str:
    return f"""
[gateway]
listen = ["{listen}"]
port = 0
port_nat_t = 0
control_socket = "{sock}"
metrics_listen = "off"
dataplane = "none"
eap_secrets = "{users}"
"""


def hub_config(tmp: Path, users: Path) -> str:
    return (
        gateway_section(HUB, tmp / "hub.sock", users)
        + f"""
[pools.rw]
addrs = "10.3.0.0/29"
dns = ["10.3.0.53"]

[connections.rw]
local_addrs = ["{HUB}"]
pools = ["rw"]
psk = "hub-psk-0123456789"
local = {{ auth = "psk", id = "hub.example" }}
remote = {{ auth = "eap-mschapv2", eap_id = "%any" }}

[connections.rw.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["dynamic"]
esp_proposals = ["aes256gcm16"]
"""
    )


def branch_config(tmp: Path, users: Path, extra: str = "") -> str:
    return (
        gateway_section(BRANCH, tmp / "branch.sock", users)
        + f"""
[connections.hub]
local_addrs = ["{BRANCH}"]
remote_addrs = ["{HUB}"]
vips = ["0.0.0.0"]
psk = "hub-psk-0123456789"
{extra}
local = {{ auth = "eap-mschapv2", id = "branch-17" }}
remote = {{ auth = "psk", id = "hub.example" }}

[connections.hub.children.net]
remote_ts = ["10.1.0.0/16"]
esp_proposals = ["aes256gcm16"]
start_action = "start"
"""
    )


Make = Callable[..., Any]


@pytest.fixture
async def gateways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    running: list[Daemon] = []

    async def make(
        branch_password: str = PASSWORD, branch_extra: str = ""
    ) -> tuple[Daemon, Daemon, RecordingDataplane, RecordingDataplane]:
        hub_users = users_file(tmp_path / "hub-users.toml")
        branch_users = users_file(tmp_path / "branch-users.toml", branch_password)
        dp_hub, dp_branch = RecordingDataplane(), RecordingDataplane()
        hub = Daemon(parse_config(hub_config(tmp_path, hub_users), "hub.toml"), dataplane=dp_hub)
        hub.config_path = None
        branch = Daemon(
            parse_config(branch_config(tmp_path, branch_users, branch_extra), "branch.toml"),
            dataplane=dp_branch,
        )
        link_in_memory(hub, branch)
        await hub.start()
        running.append(hub)
        await branch.start()
        running.append(branch)
        return hub, branch, dp_hub, dp_branch

    yield make
    for d in reversed(running):
        await d.shutdown()


def established(d: Daemon) -> list[dict[str, Any]]:
    return [sa for sa in d.list_sas() if sa["state"] == "ESTABLISHED" and sa["children"]]


async def test_a_branch_gets_an_address_and_gives_it_back(gateways: Make) -> None:
    hub, branch, _, _ = await gateways()
    await until("the tunnel", lambda: established(hub) and established(branch))
    [h], [b] = established(hub), established(branch)
    assert h["virtual_ips"] == b["virtual_ips"] == ["10.3.0.1"]
    assert h["eap_identity"] == "branch-17" and h["eap_method"] == "eap-mschapv2"
    assert h["children"][0]["remote_ts"] == ["10.3.0.1/32"]
    assert b["children"][0]["local_ts"] == ["10.3.0.1/32"]
    assert hub.stats()["pools"] == {"rw": {"online": 1, "offline": 0, "free": 5}}
    snap = await asyncio.get_running_loop().run_in_executor(None, hub.metrics_snapshot)
    assert snap.pools == {"rw": {"online": 1, "offline": 0, "free": 5}}
    # the branch goes: the address is released (kept for branch-17, offline)
    await branch.terminate("hub", 10)
    await until("the lease released", lambda: hub.stats()["pools"]["rw"]["online"] == 0)
    assert hub.stats()["pools"]["rw"] == {"online": 0, "offline": 1, "free": 5}
    assert hub.vips.leases() == [
        {"pool": "rw", "address": "10.3.0.1", "identity": "branch-17", "state": "offline"}
    ]


async def test_a_wrong_password_is_counted_and_never_logged(
    gateways: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub, branch, _, _ = await gateways(branch_password="a-wrong-password-42")
    await until("the refusal", lambda: hub.stats()["auth_failures"] == 1)
    await until("the branch's failure", lambda: branch.stats()["auth_failures"] >= 1)
    assert not established(hub)
    failed = [r.getMessage() for r in caplog.records if "event=ike-failed" in r.getMessage()]
    assert any("AUTHENTICATION_FAILED" in m and "branch-17" in m for m in failed), failed
    text = caplog.text
    assert PASSWORD not in text and "a-wrong-password-42" not in text
    assert hub.stats()["pools"]["rw"]["online"] == 0


async def test_reauthentication_replaces_the_child_sas_in_place(gateways: Make) -> None:
    hub, branch, dp_hub, dp_branch = await gateways(branch_extra='reauth_time = "2s"')
    await until("the tunnel", lambda: established(hub) and established(branch))
    [first] = established(branch)
    old_child = first["children"][0]
    await until(
        "the reauthentication",
        lambda: branch.stats()["reauths"] == 1 and len(branch.list_sas()) == 1,
    )
    [second] = established(branch)
    assert second["ike_sa"] != first["ike_sa"] and second["virtual_ips"] == ["10.3.0.1"]
    new_child = second["children"][0]
    # the branch (the initiator) replaced the old Child SA and sends on the new one at once
    assert ("replace", old_child["spi_in"], new_child["spi_in"], True, True) in [
        (c[0], f"{c[1]:08x}", f"{c[2]:08x}", c[3], c[4])
        for c in dp_branch.calls
        if c[0] == "replace"
    ]
    # the hub installed the new inbound SA only, switched when the old SA went, then retired
    await until("the hub retired the old SA", lambda: any(c[0] == "retire" for c in dp_hub.calls))
    kinds = [c[0] for c in dp_hub.calls]
    assert kinds.index("replace") < kinds.index("switch") < kinds.index("retire")
    assert [c[4] for c in dp_hub.calls if c[0] == "replace"] == [False]
    assert hub.stats()["reauths"] == 1
    [h] = established(hub)
    assert h["virtual_ips"] == ["10.3.0.1"] and len(h["children"]) == 1
    assert hub.stats()["pools"]["rw"]["online"] == 1  # the same address, held once


async def test_reload_rereads_the_users_and_keeps_the_leases(
    gateways: Make, tmp_path: Path
) -> None:
    hub, branch, _, _ = await gateways()
    await until("the tunnel", lambda: established(hub))
    users_file(tmp_path / "hub-users.toml", "a-new-password-0001")
    text = hub_config(tmp_path, tmp_path / "hub-users.toml").replace("/29", "/28")
    hub.apply_config(parse_config(text, "hub.toml"))
    assert hub.eap_users.nt_hash(b"branch-17") != branch.eap_users.nt_hash(b"branch-17")
    assert hub.stats()["pools"]["rw"] == {"online": 1, "offline": 0, "free": 13}
