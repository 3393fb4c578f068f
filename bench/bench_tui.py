"""Refresh-tick cost of the console at scale: N Child SAs polled into the running app.

Run: .venv/bin/python bench/bench_tui.py [--child-sas N] [--ticks T]
Runs the Textual app headless (200x50) against an in-memory source and prints, per tick:
- apply: the model update (rates from counter deltas, rows updated in place), filter,
  sort, table/summary/detail refresh (`GatewayApp.apply`);
- frame: CPU time of apply plus Textual repainting the screen until the app is idle
  again (process time, so the idle wait for the next refresh slot is not counted);
- decode: json.loads of the list-sas reply, which a real control connection adds;
- socket: a whole `tick()` of the console against our daemon in another process holding
  N real IKE SAs (bench/population.py: real handshakes, data plane `none` with counters
  that move), over its control socket: list-sas + stats, server side included, then
  apply and repaint, wall time and the console's CPU; with incremental list-sas (what
  the console does) and with full list-sas (what it did before), alternating.
Results are recorded in docs/benchmarks/observability.md. Goal: a tick under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.observability import FakeGateway, synthetic_ike_sas  # noqa: E402
from ui.app import GatewayApp, tune_gc  # noqa: E402

DEFAULT_GC = gc.get_threshold()


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1e3:6.1f} ms  max {max(values) * 1e3:6.1f} ms"


async def run(child_sas: int, ticks: int, sort_key: str, group: str = "child") -> None:
    polls = [synthetic_ike_sas(child_sas, tick=t) for t in range(ticks + 1)]
    gw = FakeGateway(polls[0])
    stats = await gw.stats()
    now = [1_700_000_000.0]
    app = GatewayApp(gw.connector, label="bench", poll=False, clock=lambda: now[0])
    async with app.run_test(size=(200, 50)) as pilot:
        await app.tick()  # connect, first poll (creates every row)
        app.sort_by(sort_key)
        app.model.set_group(group)
        await pilot.pause()
        apply_t, frame_t = [], []
        for t in range(1, ticks + 1):
            now[0] += 1.0
            c0, t0 = time.process_time(), time.perf_counter()
            app.apply(polls[t], stats, now[0])
            t1 = time.perf_counter()
            await pilot.pause()
            apply_t.append(t1 - t0)
            frame_t.append(time.process_time() - c0)
        assert len(app.model.view) == (child_sas if group == "child" else child_sas // 2)
    print(
        f"tui child_sas={child_sas} rows={group:5s} sort={sort_key:10s} "
        f"apply: {ms(apply_t)}   frame: {ms(frame_t)}"
    )


async def start_population(path: Path, child_sas: int) -> Any:
    """Our daemon with `child_sas` real IKE SAs in its own process (bench/population.py)."""
    import subprocess

    server = subprocess.Popen(
        [sys.executable, str(HERE / "population.py"), "--serve", str(path), "-n", str(child_sas)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = await asyncio.to_thread(server.stdout.readline)
    if not line.startswith("ready"):
        server.terminate()
        raise SystemExit(f"the populated daemon did not start: {line!r}")
    print(f"# daemon: {line.strip()}")
    return server


async def run_socket(child_sas: int, ticks: int, incremental: bool, server_path: Path) -> None:
    """Whole ticks of the console (`tick()`: list-sas + stats over the control socket,
    apply, repaint) against the populated daemon, whose counters move every second."""
    from ui.control_source import socket_connector

    app = GatewayApp(socket_connector(server_path), label="bench", poll=False)
    async with app.run_test(size=(200, 50)) as pilot:
        await app.tick()
        tune_gc()  # as `gateway tui` does
        app.incremental = incremental
        times, cpu = [], []
        for _ in range(ticks):
            await asyncio.sleep(0.2)  # the counters move between ticks
            c0, t0 = time.process_time(), time.perf_counter()
            await app.tick()
            await pilot.pause()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert len(app.model.view) == child_sas, len(app.model.view)
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_GC)
    mode = "incremental list-sas" if incremental else "full list-sas (before)"
    print(
        f"tui child_sas={child_sas} tick through the control socket, {mode:22s}: "
        f"wall {ms(times)}   console cpu {ms(cpu)}"
    )


async def socket_rounds(child_sas: int, ticks: int, rounds: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ctl.sock"
        server = await start_population(path, child_sas)
        try:
            for _ in range(rounds):  # alternating, so machine load hits both alike
                for incremental in (True, False):
                    await run_socket(child_sas, ticks, incremental, path)
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child-sas", type=int, default=10_000)
    p.add_argument("--ticks", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="socket rounds, alternating modes")
    a = p.parse_args()
    blob = json.dumps(synthetic_ike_sas(a.child_sas, tick=1)).encode()
    decode = []
    for _ in range(5):
        t0 = time.perf_counter()
        json.loads(blob)
        decode.append(time.perf_counter() - t0)
    print(
        f"tui child_sas={a.child_sas} list-sas reply {len(blob) / 1e6:.1f} MB decode: {ms(decode)}"
    )
    for key in ("connection", "bps_in"):
        asyncio.run(run(a.child_sas, a.ticks, key))
    asyncio.run(run(a.child_sas, a.ticks, "bps_in", group="ike"))
    asyncio.run(socket_rounds(a.child_sas, a.ticks, a.rounds))


if __name__ == "__main__":
    main()
