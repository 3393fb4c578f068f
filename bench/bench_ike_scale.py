"""IKE engine at scale: N established IKE SAs (one Child SA each) in one engine, their
jittered lifetimes run for hours of simulated time.

Two engines in one process, no sockets: `gw` (the gateway, responder of every SA) and
`peers` (one engine initiating all N SAs, standing in for N remote peers). All N SAs are
set up at the same simulated instant (the worst case for bunched rekeys), with the
default lifetimes (docs/ike.md: IKE rekey 4 h - rand 24 min, Child rekey 1 h - rand
6 min; both sides run their own timers, whichever fires first rekeys). Then the clock
runs forward one simulated second at a time: both engines' timers fire, every datagram is
delivered. Prints:
  - set-up rate (both sides' CPU, handshakes/s),
  - memory: process RSS growth for the 2N SAs (both engines) and per SA, and the
    gateway's Python heap per SA measured with tracemalloc on a separate sample,
  - timer processing: CPU per simulated second in handle_timer and in the exchanges it
    starts (both engines), with and without rekeys due,
  - rekeys: Child and IKE rekeys completed per simulated second (gateway's events),
    the largest number in any one second, and how many SAs are still up at the end.

With --dpd-delay S the gateway runs Dead Peer Detection on every SA (idle SAs: one empty
INFORMATIONAL per SA every S seconds, answered by the peers engine) and the DPD checks
sent and their cost per check are printed too.

Usage: .venv/bin/python bench/bench_ike_scale.py [-n 100000] [--hours 4.1] [--sample 5000]
       [--dpd-delay 0]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ike.config import ChildConfig, ConnectionConfig, EngineSettings  # noqa: E402
from ike.engine import IkeEngine  # noqa: E402
from ike.events import ChildSaRekeyed, IkeSaDeleted, IkeSaRekeyed  # noqa: E402

IKE = "aes256gcm16-prfsha384-x25519"
ESP = "aes256gcm16"
GW, PEER = "192.0.2.1", "192.0.2.2"
T0 = 1_000_000.0


def engines(dpd_delay: float = 0.0) -> tuple[IkeEngine, IkeEngine]:
    psk = b"bench-psk-0123456789abcdef"
    settings = EngineSettings(cookie_threshold=1 << 30)  # no cookies in a benchmark
    gw_child = ChildConfig("net", ("10.1.0.0/16",), ("10.2.0.0/16",), (ESP,))
    peer_child = ChildConfig("net", ("10.2.0.0/16",), ("10.1.0.0/16",), (ESP,))
    gw = IkeEngine(
        [
            ConnectionConfig(
                "gw",
                (GW,),
                (),
                psk=psk,
                ike_proposals=(IKE,),
                children=(gw_child,),
                dpd_delay=dpd_delay,
            )
        ],
        settings,
    )
    peers = IkeEngine(
        [
            ConnectionConfig(
                "peer", (PEER,), (GW,), psk=psk, ike_proposals=(IKE,), children=(peer_child,)
            )
        ],
        settings,
    )
    return gw, peers


class Sim:
    def __init__(self, dpd_delay: float = 0.0) -> None:
        self.gw, self.peers = engines(dpd_delay)
        self.now = T0
        self.rekeys: Counter[int] = Counter()  # simulated second -> rekeys completed (gw)
        self.child_rekeys = self.ike_rekeys = self.deleted = 0

    def pump(self) -> None:
        gw, peers, now = self.gw, self.peers, self.now
        while True:
            out_gw = gw.datagrams_to_send()
            out_peers = peers.datagrams_to_send()
            if not out_gw and not out_peers:
                break
            for d in out_peers:
                gw.receive_datagram(d.data, (d.remote, d.local), now)
            for d in out_gw:
                peers.receive_datagram(d.data, (d.remote, d.local), now)
        while (e := gw.next_event()) is not None:
            if isinstance(e, ChildSaRekeyed):
                self.child_rekeys += 1
                self.rekeys[int(e.time - T0)] += 1
            elif isinstance(e, IkeSaRekeyed):
                self.ike_rekeys += 1
                self.rekeys[int(e.time - T0)] += 1
            elif isinstance(e, IkeSaDeleted):
                self.deleted += 1
        while peers.next_event() is not None:
            pass

    def establish(self, n: int, batch: int = 2000) -> None:
        for start in range(0, n, batch):
            for _ in range(min(batch, n - start)):
                self.peers.initiate("peer", None, self.now)
            self.pump()

    def run(self, seconds: int) -> tuple[float, float, int]:
        """Tick every simulated second; returns (CPU in ticks with rekeys, CPU in quiet
        ticks, number of quiet ticks)."""
        busy = quiet = 0.0
        quiet_ticks = 0
        for _ in range(seconds):
            self.now += 1.0
            before = self.child_rekeys + self.ike_rekeys
            t = time.process_time()
            self.gw.handle_timer(self.now)
            self.peers.handle_timer(self.now)
            self.pump()
            spent = time.process_time() - t
            if self.child_rekeys + self.ike_rekeys == before:
                quiet += spent
                quiet_ticks += 1
            else:
                busy += spent
        return busy, quiet, quiet_ticks


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def heap_per_sa(n: int) -> float:
    """The gateway's Python heap per established SA (tracemalloc), the peers' side of
    each SA dropped right after set-up so only the gateway's objects are counted."""
    sim = Sim()
    sim.establish(50)  # warm caches (parsed addresses, proposal encodings...)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for start in range(0, n, 1000):
        sim.establish(min(1000, n - start))
        for sa in list(sim.peers._by_uid.values()):
            sim.peers._remove(sa)  # forget the peer side (its memory is not the gateway's)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(sim.gw._by_uid) == n + 50
    return used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="IKE SAs (default 100000)")
    ap.add_argument("--hours", type=float, default=4.1, help="simulated time (default 4.1)")
    ap.add_argument("--sample", type=int, default=5000, help="SAs for the heap measurement")
    ap.add_argument("--dpd-delay", type=float, default=0.0, help="gateway DPD (s, 0 = off)")
    args = ap.parse_args()

    print(f"heap sample: {args.sample} SAs ...", flush=True)
    heap = heap_per_sa(args.sample)
    print(f"gateway Python heap per IKE SA with its Child SA: {heap / 1024:.2f} KiB")

    gc.collect()
    gc.freeze()  # set-up objects live for hours: keep the collector off them
    sim = Sim(args.dpd_delay)
    rss0 = rss()
    t = time.process_time()
    sim.establish(args.n)
    setup = time.process_time() - t
    up = len(sim.gw.ike_sas())
    assert up == args.n, up
    grown = rss() - rss0
    print(
        f"set up {args.n} IKE SAs (+1 Child SA each): {setup:.1f} s CPU, "
        f"{args.n / setup:.0f} handshakes/s (both sides)"
    )
    print(
        f"RSS growth: {grown / 2**20:.0f} MiB for {2 * args.n} SAs in two engines = "
        f"{grown / (2 * args.n) / 1024:.2f} KiB per SA"
    )

    seconds = int(args.hours * 3600)
    busy, quiet, quiet_ticks = sim.run(seconds)
    busy_ticks = seconds - quiet_ticks
    top = sim.rekeys.most_common(1)[0] if sim.rekeys else (0, 0)
    print(
        f"simulated {seconds} s: {sim.child_rekeys} Child rekeys, {sim.ike_rekeys} IKE "
        f"rekeys, {sim.deleted} IKE SAs deleted, {len(sim.gw.ike_sas())} IKE SAs up"
    )
    print(
        f"rekeys in the busiest second: {top[1]} (at +{top[0]} s); seconds with rekeys: "
        f"{busy_ticks}, mean {sum(sim.rekeys.values()) / max(1, busy_ticks):.0f}/s"
    )
    waves = Counter(s // 600 for s in sim.rekeys.elements())
    print(
        "rekeys per 10 min window:",
        ", ".join(f"+{w * 10}min {c}" for w, c in sorted(waves.items())),
    )
    print(
        f"timer processing, both engines: quiet second {quiet / max(1, quiet_ticks) * 1e6:.0f}"
        f" µs; second with rekeys {busy / max(1, busy_ticks) * 1e3:.1f} ms "
        f"({busy / max(1, sum(sim.rekeys.values())) * 1e6:.0f} µs per rekey incl. the "
        "exchange on both sides)"
    )
    if args.dpd_delay:
        probes = sim.gw.stats.dpd_probes
        print(
            f"DPD every {args.dpd_delay:g} s idle: {probes} checks sent "
            f"({probes / seconds:.0f}/s), {sim.gw.stats.dead_peers} dead peers; "
            f"{(busy + quiet) / max(1, probes) * 1e6:.0f} µs per check incl. the exchange "
            "on both sides (upper bound: rekeys in the same ticks)"
        )


if __name__ == "__main__":
    main()
