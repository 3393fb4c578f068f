"""`start_action = "trap"` through two daemons with real IKE engines joined in memory and
a data plane that records traps (the kernel side, ACQUIRE and trap policies, is in
tests/kernel/test_daemon_kernel.py): the trap goes in at start, a storm of ACQUIREs makes
one initiation whose first traffic selectors are the packet's (RFC 7296 §2.9), the SA
comes up under the trap, terminate leaves the trap and the next ACQUIRE brings the SA
back, a failed initiation backs off, close_action "trap" arms a trap, reload and stop
remove traps, and `none` is refused by the config check."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.ctl import format_conns
from gateway.config.reader import ConfigError, parse_config
from gateway.daemon import Daemon
from gateway.daemon import core as daemon_core
from gateway.dataplane.base import DataplaneError, TrapKey, TrapSpec
from gateway.dataplane.none import NoneDataplane
from ike.engine import IkeEngine
from tests.support.daemon import PSK as SECRET
from tests.support.inmemory import children, link_in_memory, until
from tests.support.inmemory import config_text as rekey_config
from ui.model import SaModel

KEY = ("east", "net")


def config_text(
    socket: Path,
    local: str,
    remote: str,
    *,
    start: str,
    psk: str = SECRET,
    close: str = "none",
    dpd: str = "clear",
    dataplane: str = "xfrm",
) -> str:
    extra = f'close_action = "{close}"\ndpd_action = "{dpd}"'
    text = rekey_config(
        socket, local, remote, start, psk=psk, dataplane=dataplane, child_extra=extra
    )
    # a dead peer is found within a fraction of a second
    quick = 'retransmit_timeout = "0.05s"\nretransmit_tries = 1\n\n[connections.east]'
    return text.replace("\n[connections.east]", quick, 1)


class TrapDataplane(NoneDataplane):
    """Records traps like the kernel would hold them (reqids from 0x4e470100)."""

    def __init__(self) -> None:
        super().__init__()
        self.traps: dict[TrapKey, tuple[int, TrapSpec]] = {}
        self.trap_calls: list[tuple[str, TrapKey]] = []
        self._next = 0x4E470100

    def install_trap(self, trap: TrapSpec) -> int:
        self.trap_calls.append(("install", trap.key))
        self._next += 1
        self.traps[trap.key] = (self._next, trap)
        return self._next

    def remove_trap(self, key: TrapKey) -> None:
        self.trap_calls.append(("remove", key))
        self.traps.pop(key, None)


@dataclasses.dataclass
class Pair:
    west: Daemon
    east: Daemon
    dp: TrapDataplane
    initiates: list[tuple[Any, ...]]

    @property
    def reqid(self) -> int:
        return self.dp.traps[KEY][0]

    def trap(self) -> dict[str, Any]:
        (conn,) = self.west.list_conns()
        (child,) = conn["children"]
        return dict(child["trap"])


Make = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def make_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    made: list[Daemon] = []

    async def make(**west_kw: Any) -> Pair:
        dp = TrapDataplane()
        west_text = config_text(tmp_path / "w.sock", "127.0.0.1", "127.0.0.2", **west_kw)
        (tmp_path / "west.toml").write_text(west_text)
        west = Daemon(
            parse_config(west_text, "west.toml"),
            dataplane=dp,
            config_path=str(tmp_path / "west.toml"),
        )
        east_text = config_text(tmp_path / "e.sock", "127.0.0.2", "127.0.0.1", start="none")
        east = Daemon(parse_config(east_text, "east.toml"), dataplane=NoneDataplane())
        link_in_memory(west, east)
        initiates: list[tuple[Any, ...]] = []
        real = west.engine.initiate

        def spy(*args: Any, **kw: Any) -> int:
            initiates.append((*args, kw.get("packet_ts")))
            return real(*args, **kw)

        west.engine.initiate = spy  # type: ignore[method-assign]
        await east.start()
        await west.start()
        made.extend((west, east))
        return Pair(west, east, dp, initiates)

    yield make
    for d in made:
        await d.shutdown()


async def test_acquire_storm_brings_the_child_up_once_and_terminate_keeps_the_trap(
    make_pair: Make,
) -> None:
    p = await make_pair(start="trap")
    assert p.dp.trap_calls == [("install", KEY)]
    spec = p.dp.traps[KEY][1]
    assert (spec.local, spec.remote, spec.local_ts, spec.remote_ts) == (
        "127.0.0.1",
        "127.0.0.2",
        ("10.1.0.0/24",),
        ("10.2.0.0/24",),
    )
    assert p.trap()["state"] == "TRAPPED" and not p.west.list_sas()
    assert "start_action trap, trap TRAPPED" in format_conns(p.west.list_conns())
    console = SaModel()  # the console's row of the connection
    console.update(p.west.list_sas(), p.west.list_conns(), 0.0)
    assert console.rows[("conn", "east", "")].state == "trapped"
    for i in range(20):  # several flows and retries before the SA is there
        p.west.traps.acquired(p.reqid, f"10.1.0.{5 + i % 3}", "10.2.0.7")
    await until("installed", lambda: children(p.west) and children(p.east))
    assert len(p.initiates) == 1
    conn, child, _, packet_ts = p.initiates[0]
    assert (conn, child) == KEY
    assert [str(t.start_addr) for t in packet_ts] == ["10.1.0.5", "10.2.0.7"]
    # the responder narrowed [packet /32, 10.1.0.0/24] to the subnet alone (§2.9)
    (c,) = children(p.west)
    assert (c["local_ts"], c["remote_ts"]) == (["10.1.0.0/24"], ["10.2.0.0/24"])
    trap = p.trap()
    assert (trap["state"], trap["acquires"], trap["coalesced"]) == ("INSTALLED", 20, 19)
    assert p.west.stats()["traps"] == {"INSTALLED": 1}

    # terminate: the SA goes, the trap stays; the next packet brings the SA back
    await p.west.terminate("east", timeout=5)
    assert p.trap()["state"] == "TRAPPED" and KEY in p.dp.traps
    assert p.dp.trap_calls == [("install", KEY)]
    p.west.traps.acquired(p.reqid, "10.1.0.9", "10.2.0.1")
    await until("installed again", lambda: children(p.west))
    assert len(p.initiates) == 2 and p.trap()["state"] == "INSTALLED"

    # a second Child SA of the trapped child over the established IKE SA (not the
    # kernel's usual way, but an ACQUIRE while the IKE SA is up uses CREATE_CHILD_SA)
    await p.west.terminate("east.net", timeout=5)
    assert p.trap()["state"] == "TRAPPED" and [s["state"] for s in p.west.list_sas()] == [
        "ESTABLISHED"
    ]
    p.west.traps.acquired(p.reqid, "10.1.0.9", "10.2.0.1")
    await until("child over the IKE SA", lambda: children(p.west))
    assert len(p.initiates) == 2 and len(p.west.list_sas()) == 1

    # stop: the SAs first, then the trap
    await p.west.shutdown()
    assert p.dp.trap_calls[-1] == ("remove", KEY) and not p.dp.traps


async def test_failed_initiation_backs_off(make_pair: Make) -> None:
    p = await make_pair(start="trap", psk="a-different-secret-123")
    p.west.traps.acquired(p.reqid, "10.1.0.5", "10.2.0.7")
    await until("backoff", lambda: p.trap()["state"] == "BACKOFF")
    trap = p.trap()
    assert trap["failures"] == 1 and trap["retry_at"] > p.west.clock()
    for _ in range(5):
        p.west.traps.acquired(p.reqid, "10.1.0.5", "10.2.0.7")
    assert len(p.initiates) == 1 and p.trap()["coalesced"] == 5
    assert p.west.totals.auth_failures == 1


async def test_reload_removes_the_trap_of_a_removed_connection(
    make_pair: Make, tmp_path: Path
) -> None:
    p = await make_pair(start="trap")
    p.west.traps.acquired(p.reqid, "10.1.0.5", "10.2.0.7")
    await until("installed", lambda: children(p.west))
    text = (tmp_path / "west.toml").read_text()
    (tmp_path / "west.toml").write_text(text.split("[connections.east]")[0])
    result = await p.west.reload()
    assert result["removed"] == ["east"]
    # the trap shares the SA's out policies: it goes once the SA is gone
    await until("trap removed", lambda: ("remove", KEY) in p.dp.trap_calls)
    assert not p.west.list_sas() and not p.dp.traps and not p.west.traps.table.all()


async def test_close_action_trap_after_the_peer_closes(make_pair: Make) -> None:
    p = await make_pair(start="start", close="trap")
    await until("installed", lambda: children(p.west) and children(p.east))
    assert not p.dp.traps
    (conn,) = p.west.list_conns()
    assert conn["children"][0]["trap"] is None
    await p.east.terminate("east", timeout=5)  # the peer closes the IKE SA
    await until("trap armed", lambda: KEY in p.dp.traps)
    assert p.trap()["state"] == "TRAPPED"
    p.west.traps.acquired(p.reqid, "10.1.0.5", "10.2.0.7")
    await until("back", lambda: children(p.west))


async def test_dpd_action_trap_after_a_dead_peer(make_pair: Make) -> None:
    p = await make_pair(start="start", dpd="trap")
    await until("installed", lambda: children(p.west) and children(p.east))
    assert not p.dp.traps
    sends = (p.west.transport.send, p.east.transport.send)
    p.west.transport.send = p.east.transport.send = lambda *a: True  # type: ignore[method-assign]
    (sa,) = p.west.list_sas()
    assert isinstance(p.west.engine, IkeEngine)  # the real engine: force a liveness check
    p.west.engine.check_liveness(sa["ike_sa"], p.west.clock())
    p.west.pump()
    await until("dead peer, trap armed", lambda: KEY in p.dp.traps)
    assert not p.west.list_sas() and p.west.totals.dpd_failures == 1
    assert p.trap()["state"] == "TRAPPED"
    p.west.transport.send, p.east.transport.send = sends  # type: ignore[method-assign]
    p.west.traps.acquired(p.reqid, "10.1.0.5", "10.2.0.7")
    await until("back", lambda: children(p.west))
    assert p.trap()["state"] == "INSTALLED"


def test_trap_needs_a_kernel_data_plane(tmp_path: Path) -> None:
    text = config_text(tmp_path / "s", "127.0.0.1", "127.0.0.2", start="trap", dataplane="none")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    message = str(info.value)
    assert "connections.east.children.net.start_action" in message
    assert 'dataplane = "none"' in message
    text = config_text(tmp_path / "s", "127.0.0.1", "%any", start="trap")
    with pytest.raises(ConfigError, match="trap needs a concrete address in remote_addrs"):
        parse_config(text, "gw.toml")
    text = config_text(tmp_path / "s", "127.0.0.1", "127.0.0.2", start="none", dpd="trap")
    with pytest.raises(ConfigError, match="workers = 1"):
        parse_config(text.replace("port = 0\n", "port = 0\nworkers = 2\n", 1), "gw.toml")
    with pytest.raises(DataplaneError):
        NoneDataplane().install_trap(
            TrapSpec("a", "b", "192.0.2.1", "192.0.2.2", ("10.0.0.0/8",), ("10.0.0.0/8",), "")
        )
