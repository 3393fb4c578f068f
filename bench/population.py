"""A running daemon with N real IKE SAs (one Child SA each), for the benchmarks that
measure what an operator polls: the console's tick (bench_tui), the /metrics scrape
(bench_metrics) and the daemon at 100,000 SAs (bench_scale).

`populated_daemon()` starts our `Daemon` (the real core, features, records, control
server and, if asked, its Prometheus exporter) with data plane `none` and a stand-in
for the kernel's counters that move with time, then sets up N IKE SAs with real
IKE_SA_INIT + IKE_AUTH handshakes against a second IKE engine in the same process (the
peers), delivering datagrams in memory instead of over UDP. Everything the control API
and the exporter read is therefore what the daemon really holds; what it does not cover
is the kernel (XFRM install and counter reads: bench_xfrm, bench_daemon --vm).

`python bench/population.py --serve SOCKET -n N [--metrics PORT]` runs one in its own
process (as the daemon would be) until terminated; it prints `ready` once populated.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.dataplane.base import Counters, Installed  # noqa: E402
from gateway.dataplane.none import NoneDataplane  # noqa: E402

PSK = "bench-psk-0123456789abcdef"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"
GW, PEER = "127.0.0.1", "127.0.0.2"  # no datagram crosses a socket: delivered in memory


class MovingCounters(NoneDataplane):
    """`none` whose Child SAs seem to carry traffic: counters grow with the clock (a
    stand-in for the kernel's, which only the VM has; reading those is issue 14's path)."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.monotonic()

    def counters(self, installed: Installed) -> Counters:
        t = time.monotonic() - self.t0
        rate = 1000 + installed.spi_in % 5000  # bytes/s, different per SA
        b = int(t * rate)
        return Counters(b, b // 500, b // 2, b // 1000)


def config_text(control: Path, metrics: int | None) -> str:
    listen = f'"127.0.0.1:{metrics}"' if metrics else '"off"'
    return f"""
[gateway]
listen = ["{GW}"]
port = 0
port_nat_t = 0
control_socket = "{control}"
metrics_listen = {listen}
dataplane = "none"
log_level = "warning"

[connections.lg]
local_addrs = ["{GW}"]
ike_proposals = ["{IKE}"]
local = {{ auth = "psk", id = "responder" }}
remote = {{ auth = "psk" }}
psk = "{PSK}"

[connections.lg.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.9.0.0/16"]
esp_proposals = ["{ESP}"]
"""


class Population:
    """Our daemon plus an in-memory peers engine that sets up IKE SAs with it."""

    def __init__(self, control: Path, metrics: int | None = None) -> None:
        from gateway.config.reader import parse_config
        from gateway.daemon import Daemon
        from ike.config import ChildConfig, ConnectionConfig, EngineSettings
        from ike.engine import IkeEngine

        config = parse_config(config_text(control, metrics), "bench.toml", control.parent)
        self.dataplane = MovingCounters()
        self.daemon = Daemon(config, dataplane=self.dataplane)
        self.peers = IkeEngine(
            [
                ConnectionConfig(
                    "peer",
                    (PEER,),
                    (GW,),
                    local_id="peer",
                    psk=PSK.encode(),
                    ike_proposals=(IKE,),
                    children=(ChildConfig("net", ("10.9.0.0/16",), ("10.1.0.0/16",), (ESP,)),),
                )
            ],
            EngineSettings(cookie_threshold=1 << 30, retransmit_timeout=60.0),
        )
        self._to_peers: list[tuple[bytes, Any, Any]] = []
        self.daemon.transport.send = self._daemon_sends  # type: ignore[method-assign]

    def _daemon_sends(self, data: bytes, local: Any, remote: Any) -> bool:
        self._to_peers.append((data, local, remote))
        return True

    async def start(self) -> None:
        await self.daemon.start()

    def deliver(self) -> None:
        """Exchange datagrams until both sides are quiet (events of the peers dropped)."""
        d, peers = self.daemon, self.peers
        while True:
            out = peers.datagrams_to_send()
            if not out and not self._to_peers:
                break
            now = time.time()
            for dg in out:  # the daemon's local address is the datagram's remote
                d.receive(dg.data, dg.remote, dg.local)
            if out:
                d.pump()
            queued, self._to_peers = self._to_peers, []
            for data, local, remote in queued:
                peers.receive_datagram(data, (remote, local), now)
            while peers.next_event() is not None:
                pass

    async def grow(self, n: int, batch: int = 500) -> float:
        """n more IKE SAs; returns the wall seconds it took (the loop keeps serving)."""
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            now = time.time()
            for _ in range(min(batch, n - start)):
                self.peers.initiate("peer", None, now)
            self.deliver()
            await asyncio.sleep(0)  # control requests and scrapes are served meanwhile
        return time.perf_counter() - t0

    def child_sas(self) -> int:
        return sum(len(r.children) for r in self.daemon.sas.values())


async def serve(control: Path, n: int, metrics: int | None) -> None:
    pop = Population(control, metrics)
    await pop.start()
    seconds = await pop.grow(n)
    print(f"ready {pop.child_sas()} child SAs in {seconds:.1f}s", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", required=True, metavar="SOCKET")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--metrics", type=int, default=None, metavar="PORT")
    a = p.parse_args()
    asyncio.run(serve(Path(a.serve), a.n, a.metrics))


if __name__ == "__main__":
    main()
