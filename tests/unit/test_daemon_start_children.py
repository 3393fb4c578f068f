"""start_action and close_action "start" through two daemons with real IKE engines joined
in memory: every Child with start_action "start" comes up on the one IKE SA (the first in
IKE_AUTH, the others by CREATE_CHILD_SA), and close_action "start" brings a Child back
when the peer closes it alone or with its IKE SA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config.reader import parse_config
from gateway.daemon import Daemon
from gateway.daemon import core as daemon_core
from tests.support.inmemory import children, link_in_memory, until
from tests.support.inmemory import config_text as rekey_config

SECOND = """
[connections.east.children.web]
local_ts = ["10.{a}.1.0/24"]
remote_ts = ["10.{b}.1.0/24"]
esp_proposals = ["aes256gcm16-x25519"]
start_action = "{start}"
close_action = "{close}"
"""

Make = Callable[..., Awaitable[tuple[Daemon, Daemon]]]


def config_text(socket: Path, local: str, remote: str, start: str, close: str) -> str:
    text = rekey_config(socket, local, remote, start, child_extra=f'close_action = "{close}"')
    return text + SECOND.format(a=local[-1], b=remote[-1], start=start, close=close)


@pytest.fixture
async def make_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    made: list[Daemon] = []

    async def make(close: str = "none") -> tuple[Daemon, Daemon]:
        west = Daemon(
            parse_config(config_text(tmp_path / "w.sock", "127.0.0.1", "127.0.0.2", "start", close))
        )
        east = Daemon(
            parse_config(config_text(tmp_path / "e.sock", "127.0.0.2", "127.0.0.1", "none", "none"))
        )
        link_in_memory(west, east)
        await east.start()
        await west.start()
        made.extend((west, east))
        return west, east

    yield make
    for d in made:
        await d.shutdown()


def names(d: Daemon) -> list[str]:
    return sorted(c["name"] for c in children(d))


def ike_sas(d: Daemon) -> list[str]:
    return [sa["spi_i"] for sa in d.list_sas() if sa["state"] == "ESTABLISHED"]


async def test_every_start_child_comes_up_on_one_ike_sa(make_pair: Make) -> None:
    west, east = await make_pair()
    await until("both children", lambda: names(west) == names(east) == ["net", "web"])
    assert len(ike_sas(west)) == len(ike_sas(east)) == 1
    (web,) = (c for c in children(west) if c["name"] == "web")
    assert (web["local_ts"], web["remote_ts"]) == (["10.1.1.0/24"], ["10.2.1.0/24"])


async def test_close_action_start_brings_a_closed_child_back(make_pair: Make) -> None:
    west, east = await make_pair(close="start")
    await until("both children", lambda: names(west) == ["net", "web"])
    (ike,) = ike_sas(west)
    old = next(c["spi_in"] for c in children(west) if c["name"] == "web")
    await east.terminate("east.web", 5.0)  # the peer closes one Child
    await until(
        "web back",
        lambda: any(c["name"] == "web" and c["spi_in"] != old for c in children(west)),
    )
    assert ike_sas(west) == [ike]  # over the same IKE SA
    await east.terminate("east", 5.0)  # the peer closes the IKE SA with both Children
    await until(
        "both back on a new IKE SA",
        lambda: names(west) == names(east) == ["net", "web"] and ike_sas(west) != [ike],
    )
    assert len(ike_sas(west)) == 1


async def test_close_action_none_leaves_a_closed_child_down(make_pair: Make) -> None:
    west, east = await make_pair()
    await until("both children", lambda: names(west) == ["net", "web"])
    await east.terminate("east.web", 5.0)
    await until("web gone", lambda: names(west) == ["net"])
    await asyncio.sleep(0.2)  # nothing brings it back
    assert names(west) == ["net"]
