"""Refresh-tick cost of the console at scale: N Child SAs polled into the running app.

Run: .venv/bin/python bench/bench_tui.py [--child-sas N] [--ticks T]
Runs the Textual app headless (200x50) against an in-memory source and prints, per tick:
- apply: the model update (rates from counter deltas, rows updated in place), filter,
  sort, table/summary/detail refresh (`GatewayApp.apply`);
- frame: CPU time of apply plus Textual repainting the screen until the app is idle
  again (process time, so the idle wait for the next refresh slot is not counted);
- decode: json.loads of the list-sas reply, which a real control connection adds;
- socket: a whole `tick()` through a real ControlServer (in another process, like the
  daemon) and ControlClient on a unix socket: server-side JSON encoding, transfer,
  decoding, apply and repaint, wall time.
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


class Backend:
    """A control API backend serving synthetic list-sas replies whose counters move."""

    def __init__(self, child_sas: int, ticks: int) -> None:
        self.polls = [synthetic_ike_sas(child_sas, tick=t) for t in range(ticks + 2)]
        self.n = 0

    def list_conns(self) -> list[dict[str, object]]:
        return []

    def list_sas(self) -> list[dict[str, object]]:
        self.n += 1
        return self.polls[self.n % len(self.polls)]

    def stats(self) -> dict[str, object]:
        return {"uptime": 1, "version": "bench", "child_sas": len(self.polls[0]) * 2}

    async def initiate(self, name: str, timeout: float) -> None: ...

    async def terminate(self, name: str, timeout: float) -> None: ...

    async def rekey(self, name: str, timeout: float) -> None: ...

    async def reload(self) -> None: ...


async def serve(path: str, child_sas: int, ticks: int) -> None:
    """The server side of the socket benchmark (run in its own process)."""
    from gateway.control.server import ControlServer

    server = ControlServer(Backend(child_sas, ticks), path)
    await server.start()
    await asyncio.Event().wait()  # until terminated


async def run_socket(child_sas: int, ticks: int, tuned: bool) -> None:
    import subprocess
    import tempfile

    from ui.control_source import socket_connector

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ctl.sock"
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(path),
                "--child-sas",
                str(child_sas),
                "--ticks",
                str(ticks),
            ]
        )
        try:
            while not path.exists():
                if server.poll() is not None:
                    raise SystemExit("the benchmark's control server failed")
                await asyncio.sleep(0.1)
            app = GatewayApp(socket_connector(path), label="bench", poll=False)
            async with app.run_test(size=(200, 50)) as pilot:
                await app.tick()
                if tuned:
                    tune_gc()  # as `gateway tui` does
                times, cpu = [], []
                for _ in range(ticks):
                    c0, t0 = time.process_time(), time.perf_counter()
                    await app.tick()
                    await pilot.pause()
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                assert len(app.model.view) == child_sas
        finally:
            server.terminate()
            server.wait(10)
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_GC)
    print(
        f"tui child_sas={child_sas} tick through the control socket, "
        f"{'tuned' if tuned else 'default'} gc: wall {ms(times)}   console cpu {ms(cpu)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child-sas", type=int, default=10_000)
    p.add_argument("--ticks", type=int, default=10)
    p.add_argument("--serve", metavar="SOCKET", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.child_sas, a.ticks))
        return
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
    for tuned in (False, True):
        asyncio.run(run_socket(a.child_sas, a.ticks, tuned))


if __name__ == "__main__":
    main()
