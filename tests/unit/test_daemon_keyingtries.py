"""keyingtries (gateway/daemon/retries.py): a failed initiation of ours is retried after a
jittered backoff until the connection's keyingtries are used (0: forever); success,
`terminate`, a reload and shutdown stop the retries. FakeEngine (tests/support/fake_engine.py)
fails connections named `bad*` with AUTHENTICATION_FAILED; the backoff is shortened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.engine import engine_connection
from gateway.config.reader import parse_config
from gateway.control.client import ControlClient
from gateway.control.protocol import ControlError
from gateway.daemon import Daemon
from gateway.daemon.records import Attempt
from gateway.daemon.retries import RETRY_JITTER
from ike import events as ev
from tests.support.daemon import PSK as SECRET
from tests.support.fake_engine import FakeEngine, RecordingDataplane

SHORT = (0.01, 0.04)  # the backoff in these tests: 10 ms doubling to 40 ms
SLACK = 0.5  # a busy machine may take this long from scheduling a retry to looking at it


def config(sock: Path, name: str, keyingtries: int) -> str:
    return f"""
[gateway]
listen = ["127.0.0.1"]
port = 0
control_socket = "{sock}"
metrics_listen = "off"
dataplane = "none"

[connections.{name}]
local_addrs = ["127.0.0.1"]
remote_addrs = ["127.0.0.2"]
local = {{ auth = "psk", id = "gw-west" }}
remote = {{ auth = "psk", id = "gw-east" }}
psk = "{SECRET}"
keyingtries = {keyingtries}

[connections.{name}.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
start_action = "start"
"""


class FlakyEngine(FakeEngine):
    """FakeEngine whose first `failures` initiations fail (the peer is not there yet)."""

    failures = 0

    def handle_timer(self, now: float) -> None:
        while self.failures and self.pending:
            ike_sa, name, _ = self.pending.pop(0)
            self.failures -= 1
            self.events.append(ev.IkeSaFailed(ike_sa, name, ("127.0.0.2", 500), "timeout", now))
        super().handle_timer(now)


class Gw:
    def __init__(self, daemon: Daemon, engine: FakeEngine, client: ControlClient) -> None:
        self.daemon, self.engine, self.client = daemon, engine, client

    def initiations(self) -> int:
        return sum(1 for c in self.engine.calls if c[0] == "initiate")


async def start(
    tmp_path: Path, name: str, keyingtries: int, failures: int = 0, delays: Any = SHORT
) -> tuple[Gw, AsyncIterator[dict[str, Any]]]:
    sock = tmp_path / "c.sock"
    cfg = parse_config(config(sock, name, keyingtries))
    engine = FlakyEngine([engine_connection(c) for c in cfg.connections])
    engine.failures = failures
    daemon = Daemon(cfg, dataplane=RecordingDataplane(), engine=engine)
    daemon.retries.delays = delays
    daemon.transport.send = lambda data, local, remote: True  # type: ignore[method-assign]
    await daemon.start()
    client = await ControlClient.connect(sock)
    return Gw(daemon, engine, client), await client.subscribe()


async def stop(gw: Gw) -> None:
    await gw.client.close()
    await gw.daemon.shutdown()
    assert gw.daemon.retries.pending == {} and gw.daemon.retries.in_flight == {}  # nothing leaked


async def until(events: AsyncIterator[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The events up to and including the next one of type `kind`."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != kind:
        seen.append(await asyncio.wait_for(anext(events), 5))
    return seen


async def test_keyingtries_3_makes_exactly_3_attempts(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "bad", 3)
    try:
        failed: list[dict[str, Any]] = []
        retries: list[dict[str, Any]] = []
        while len(failed) < 3:
            for e in await until(events, "ike-failed"):
                (failed if e["type"] == "ike-failed" else retries).append(e)
        assert [e["reason"] for e in failed] == ["AUTHENTICATION_FAILED"] * 3
        assert [(e["attempt"], e["keyingtries"]) for e in retries] == [(2, 3), (3, 3)]
        assert [e["ike_sa"] for e in retries] == [2, 3]
        assert gw.engine.calls.count(("initiate", "bad", "net")) == 3
        await asyncio.sleep(10 * SHORT[1])  # far beyond the next backoff: no 4th attempt
        assert gw.initiations() == 3 and gw.daemon.retries.pending == {}
        assert (await gw.client.stats())["auth_failures"] == 3
    finally:
        await stop(gw)


async def test_keyingtries_0_keeps_trying(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "bad", 0)
    try:
        attempts: list[int] = []
        while len(attempts) < 6:  # beyond the cap (10, 20, 40, 40, 40 ms)
            attempts.append((await until(events, "ike-retry"))[-1]["attempt"])
        # on a busy machine the first retry may come before the subscription
        assert attempts[0] in (2, 3) and attempts == list(range(attempts[0], attempts[0] + 6))
    finally:
        await stop(gw)


async def test_success_stops_the_retries(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "east", 0, failures=2)
    try:
        seen = await until(events, "child-established")
        kinds = [e["type"] for e in seen]
        retried = ["ike-failed", "ike-retry", "ike-failed", "ike-retry"]
        # on a busy machine the first events may come before the subscription
        assert kinds[-2:] == ["ike-established", "child-established"]
        assert retried[len(retried) - len(kinds[:-2]) :] == kinds[:-2] and len(kinds) >= 4
        await asyncio.sleep(10 * SHORT[1])
        assert (
            gw.initiations() == 3
            and gw.daemon.retries.pending == {}
            and gw.daemon.retries.in_flight == {}
        )
        (sa,) = await gw.client.list_sas()
        assert sa["state"] == "ESTABLISHED" and sa["children"][0]["name"] == "net"
    finally:
        await stop(gw)


async def test_backoff_is_jittered_and_terminate_cancels_it(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "bad", 0, delays=(1.0, 60.0))  # the defaults
    try:
        await until(events, "ike-failed")
        handle = gw.daemon.retries.pending["bad"]
        delay = handle.when() - asyncio.get_running_loop().time()
        assert 1.0 - RETRY_JITTER - SLACK <= delay <= 1.0
        result = await gw.client.terminate("bad")
        assert result["message"] == "terminate bad: pending initiation retry cancelled"
        assert handle.cancelled() and gw.daemon.retries.pending == {}
        with pytest.raises(ControlError, match="has no IKE SA"):
            await gw.client.terminate("bad")  # nothing pending any more
        # a control initiate reports its own first attempt; retries go on behind it
        gw.daemon.retries.delays = SHORT
        with pytest.raises(ControlError, match="initiate bad: AUTHENTICATION_FAILED"):
            await gw.client.initiate("bad", timeout=5)
        retry = (await until(events, "ike-retry"))[-1]
        assert retry["attempt"] == 2
        # terminate while an attempt is in flight: its failure is not retried
        await gw.client.terminate("bad")
        assert gw.daemon.retries.in_flight == {} and gw.daemon.retries.pending == {}
        before = gw.initiations()
        await asyncio.sleep(10 * SHORT[1])
        assert gw.initiations() == before
    finally:
        await stop(gw)


async def test_delays_double_up_to_the_cap(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "bad", 0, delays=(1.0, 4.0))
    try:
        loop = asyncio.get_running_loop()
        for attempt, full in ((2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0)):
            await until(events, "ike-failed")
            handle = gw.daemon.retries.pending["bad"]
            delay = handle.when() - loop.time()
            assert full * (1 - RETRY_JITTER) - SLACK <= delay <= full, attempt
            handle.cancel()  # fire it now instead of waiting
            gw.daemon.retries.pending.pop("bad")
            conn = gw.daemon.config.connection("bad")
            assert conn is not None

            gw.daemon.retries.retry(conn, Attempt("bad", "net", attempt))
    finally:
        await stop(gw)


async def test_reload_removing_the_connection_cancels_its_retry(tmp_path: Path) -> None:
    gw, events = await start(tmp_path, "bad", 0, delays=(1.0, 60.0))
    try:
        await until(events, "ike-failed")
        handle = gw.daemon.retries.pending["bad"]
        new = parse_config(config(tmp_path / "c.sock", "east", 1))
        assert gw.daemon.apply_config(new)["removed"] == ["bad"]
        assert handle.cancelled() and "bad" not in gw.daemon.retries.pending
    finally:
        await stop(gw)
