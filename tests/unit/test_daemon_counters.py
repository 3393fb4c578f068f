"""Per-SA counters through two daemons joined in memory (real IKE engines) over a data
plane that counts per state like the kernel does: a Child SA's counters run on over its
rekeys (both roles), SAs that go keep what they counted (read just before they go), a
Child SA that ends leaves its totals in `retired` and the metrics, and one read serves
every request of an interval (gateway/daemon/traffic.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.client import ControlClient
from gateway.daemon import Daemon, backend
from gateway.daemon import core as daemon_core
from gateway.dataplane.base import Counters, Installed
from gateway.dataplane.none import NoneDataplane
from gateway.metrics import rows_from_list_sas, snapshot_from
from tests.support.inmemory import Pair, started_pair, until


class CountingDataplane(NoneDataplane):
    """Counts per state as the kernel does: (inbound?, SPI) -> [bytes, packets, replay].
    A state's counts go with it; `reads` counts the one-read tables asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[tuple[bool, int], list[int]] = {}
        self.reads = 0

    def _add(self, installed: Installed, inbound: bool, outbound: bool) -> None:
        if inbound:
            self.states.setdefault((True, installed.spi_in), [0, 0, 0])
        if outbound:
            self.states.setdefault((False, installed.spi_out), [0, 0, 0])

    def install(self, child: Any, config: Any) -> Installed:
        installed = super().install(child, config)
        self._add(installed, True, True)
        return installed

    def replace(
        self,
        old: Installed,
        child: Any,
        config: Any,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        new = super().replace(
            old, child, config, keep_old_inbound=keep_old_inbound, switch_outbound=switch_outbound
        )
        self._add(new, True, switch_outbound)
        if switch_outbound:
            self.states.pop((False, old.spi_out), None)
        if not keep_old_inbound:
            self.states.pop((True, old.spi_in), None)
        return new

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        self.states.pop((False, old.spi_out), None)
        self._add(new, False, True)
        return super().switch_outbound(old, new)

    def retire(self, old: Installed) -> None:
        self.states.pop((True, old.spi_in), None)

    def remove(self, installed: Installed) -> None:
        self.states.pop((True, installed.spi_in), None)
        self.states.pop((False, installed.spi_out), None)
        super().remove(installed)

    def bump(self, inbound: bool, spi: int, packets: int, replay: int = 0) -> None:
        state = self.states[(inbound, spi)]
        state[0] += 100 * packets
        state[1] += packets
        state[2] += replay

    def counters_in(
        self, table: Any, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        sa_in = table.get((True, installed.spi_in), [0, 0, 0]) if inbound else [0, 0, 0]
        sa_out = table.get((False, installed.spi_out), [0, 0, 0]) if outbound else [0, 0, 0]
        return Counters(sa_in[0], sa_in[1], sa_out[0], sa_out[1], sa_in[2])

    def counters(
        self, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        return self.counters_in(self.states, installed, inbound=inbound, outbound=outbound)

    def read_counters(self) -> Any:
        self.reads += 1
        return {key: list(value) for key, value in self.states.items()}


@pytest.fixture
async def pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pair[CountingDataplane]]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    async with started_pair(
        tmp_path, CountingDataplane(), CountingDataplane(), "counters_interval = 0"
    ) as pair:
        yield pair


async def child_row(client: ControlClient) -> dict[str, Any]:
    for _ in range(300):
        sas = await client.list_sas()
        if sas and sas[0]["state"] == "ESTABLISHED" and sas[0]["children"]:
            return dict(sas[0]["children"][0])
        await asyncio.sleep(0.01)
    raise AssertionError("not established")


def spis(row: dict[str, Any]) -> tuple[int, int]:
    return int(row["spi_in"], 16), int(row["spi_out"], 16)


async def east_row(east: Daemon) -> dict[str, Any]:
    await east.fresh_counters()
    (sa,) = backend.list_sas(east)
    return dict(sa["children"][0])


async def test_counters_run_over_rekeys_and_stay_when_the_child_goes(
    pair: Pair[CountingDataplane],
) -> None:
    first = await child_row(pair.client)
    a_in, a_out = spis(first)
    pair.dp_west.bump(True, a_in, 10, replay=1)
    pair.dp_west.bump(False, a_out, 5)
    pair.dp_east.bump(True, a_out, 5)  # east's inbound is west's outbound SPI
    pair.dp_east.bump(False, a_in, 10)
    row = await child_row(pair.client)
    assert (row["packets_in"], row["packets_out"], row["replay_errors"]) == (10, 5, 1)
    assert (row["bytes_in"], row["bytes_out"]) == (1000, 500)
    assert "offload_reason" in row and row["offload"] == "none"

    # rekey, west initiating: west's old outbound SA goes at once (its 5 packets stay),
    # the old inbound SA is kept until its grace ends and counts on meanwhile
    await pair.client.rekey("east.net", timeout=5)
    row = await child_row(pair.client)
    b_in, b_out = spis(row)
    assert (b_in, b_out) != (a_in, a_out)
    if (True, a_in) in pair.dp_west.states:  # still in its grace: in-flight packets
        pair.dp_west.bump(True, a_in, 1)
        late = 1
    else:
        late = 0
    pair.dp_west.bump(True, b_in, 2)
    pair.dp_west.bump(False, b_out, 3)
    row = await child_row(pair.client)
    assert (row["packets_in"], row["packets_out"]) == (12 + late, 8)
    await until("the old inbound SA retired", lambda: (True, a_in) not in pair.dp_west.states)
    row = await child_row(pair.client)
    assert (row["packets_in"], row["packets_out"], row["replay_errors"]) == (12 + late, 8, 1)

    # east answered the rekey: it kept sending on its old SA until west's Delete, then
    # switched; its counters run on as well
    await until("east switched", lambda: (False, a_in) not in pair.dp_east.states)
    pair.dp_east.bump(True, b_out, 3)
    pair.dp_east.bump(False, b_in, 2)
    east = await east_row(pair.east)
    assert (east["packets_in"], east["packets_out"]) == (8, 12)

    # the Child SA goes: its totals stay with (connection, child), in stats and metrics
    await pair.client.terminate("east", timeout=5)
    await until("west's Child gone", lambda: not pair.dp_west.states)
    stats = await pair.client.stats()
    assert stats["retired"]["east.net"]["packets_in"] == 12 + late
    assert stats["retired"]["east.net"]["packets_out"] == 8
    assert stats["retired"]["east.net"]["replay_errors"] == 1
    assert (stats["packets_in"], stats["packets_out"]) == (12 + late, 8)
    snap = snapshot_from(await pair.client.list_sas(), stats, start_time=None)
    assert snap.child_sas_gone[("east", "net")][:4] == [1200 + 100 * late, 12 + late, 800, 8]


async def test_one_read_serves_an_interval(pair: Pair[CountingDataplane]) -> None:
    await child_row(pair.client)
    pair.west.config = dataclasses.replace(
        pair.west.config,
        gateway=dataclasses.replace(pair.west.config.gateway, counters_interval=60),
    )
    before = pair.dp_west.reads
    await asyncio.gather(*(pair.west.fresh_counters() for _ in range(5)))
    await pair.client.list_sas()
    await pair.client.stats()
    assert pair.dp_west.reads - before <= 1  # one read in flight, then reused


async def test_scrape_rows_built_off_the_loop_match_list_sas(
    pair: Pair[CountingDataplane],
) -> None:
    """The daemon's scrape takes only the records on its loop and builds the Child rows
    in the exporter's thread: the same rows and states as from list-sas."""
    row = await child_row(pair.client)
    a_in, a_out = spis(row)
    pair.dp_west.bump(True, a_in, 7, replay=2)
    pair.dp_west.bump(False, a_out, 5)
    snap = await asyncio.to_thread(backend.metrics_snapshot, pair.west)
    states, rows = snap.rows()
    assert (states, rows) == rows_from_list_sas(await pair.client.list_sas())
    (only,) = rows
    assert (only.connection, only.child, only.state) == ("east", "net", "INSTALLED")
    assert only.counters[:5] == (700, 7, 500, 5, 2)
