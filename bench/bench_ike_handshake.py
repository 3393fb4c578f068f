"""IKE handshake throughput of the sans-IO engine, in process (no sockets).

Times are CPU seconds of this process (time.process_time), so other load on a shared
machine does not count. Runs N full IKE_SA_INIT + IKE_AUTH handshakes (one Child SA
each) between two engines, aes256gcm16-prfsha384-x25519 / aes256gcm16, the initiator
engine playing --peers peers (each its own address, identity and connection, taken in
turn; the responder's one connection accepts them all), and prints the median of
--repeat runs of:
  - handshakes/s for the pair (both sides' CPU in one process),
  - responder-side handshakes/s (time inside the responder engine only),
  - initiator-side handshakes/s,
  - how the responder's time splits into crypto (the HMAC, X25519 and AEAD calls it made,
    recorded on the real path and replayed alone) and the Python around it,
  - the responder handling many peers back to back (all IKE_SA_INIT, then all IKE_AUTH),
    as a gateway does, without the initiator's work in between,
  - the memory an established responder IKE SA with its Child SA holds (tracemalloc),
  - optionally (--profile) the top functions by own time on the responder.

Usage: .venv/bin/python bench/bench_ike_handshake.py [-n 2000] [--peers 64] [--repeat 5]
       [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hmac
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from ike.config import ChildConfig, ConnectionConfig, EngineSettings  # noqa: E402
from ike.engine import IkeEngine  # noqa: E402
from ike.events import ChildSaEstablished  # noqa: E402

IKE = "aes256gcm16-prfsha384-x25519"
ESP = "aes256gcm16"
A, B = "192.0.2.1", "192.0.2.2"


PEERS = 64  # --peers


def peer_address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def engines() -> tuple[IkeEngine, IkeEngine]:
    psk = b"bench-psk-0123456789abcdef"
    child_b = ChildConfig("net", ("10.2.0.0/16",), ("10.1.0.0/16",), (ESP,))
    a = IkeEngine(
        [
            ConnectionConfig(
                f"a{i}",
                (peer_address(i),),
                (B,),
                local_id=f"peer-{i}.example",
                psk=psk,
                ike_proposals=(IKE,),
                children=(ChildConfig("net", (f"10.1.{i % 250}.0/24",), ("10.2.0.0/16",), (ESP,)),),
            )
            for i in range(PEERS)
        ]
    )
    # the responder accepts any peer and never demands cookies in this benchmark
    b = IkeEngine(
        [ConnectionConfig("b", (B,), (), psk=psk, ike_proposals=(IKE,), children=(child_b,))],
        EngineSettings(cookie_threshold=1 << 30),
    )
    return a, b


class CryptoMeter:
    """Records the C crypto calls the engine makes (HMAC, DH, AEAD) while `on` is set,
    then replays exactly those calls alone and times them in CPU seconds.

    Wrappers replace the module attributes the engine calls, so the split between crypto
    and Python comes from the real code path; replaying keeps other users' load on a
    shared machine (and the wrappers' own cost) out of the crypto figure.
    """

    def __init__(self) -> None:
        self.on = False
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self._undo: list[tuple[object, str, object]] = []

    def _wrap(self, owner: object, name: str) -> None:
        fn = getattr(owner, name)
        calls = self.calls

        def recorded(*args: object) -> object:
            if self.on:
                calls.append((fn, args))
            return fn(*args)

        self._undo.append((owner, name, fn))
        setattr(owner, name, recorded)

    def install(self) -> None:
        import ike.crypto
        import ike.sk

        self._wrap(hmac, "digest")
        self._wrap(ike.crypto.DhGroupImpl, "generate")
        self._wrap(ike.crypto.DhGroupImpl, "exchange")
        self._wrap(ike.sk, "aead_context")
        meter = self
        made = ike.sk.aead_context

        class RecordedAead:
            def __init__(self, ctx: object) -> None:
                self.ctx = ctx

            def encrypt(self, *a: object) -> bytes:
                if meter.on:
                    meter.calls.append((self.ctx.encrypt, a))  # type: ignore[attr-defined]
                return self.ctx.encrypt(*a)  # type: ignore[attr-defined,no-any-return]

            def decrypt(self, *a: object) -> bytes:
                if meter.on:
                    meter.calls.append((self.ctx.decrypt, a))  # type: ignore[attr-defined]
                return self.ctx.decrypt(*a)  # type: ignore[attr-defined,no-any-return]

        self._undo.append((ike.sk, "aead_context", made))
        ike.sk.aead_context = lambda e, k: RecordedAead(made(e, k))  # type: ignore[assignment,return-value]

    def uninstall(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()

    def replay_seconds(self) -> float:
        """CPU seconds of the recorded calls, replayed back to back."""
        calls = self.calls
        t0 = time.process_time()
        for fn, args in calls:
            fn(*args)
        return time.process_time() - t0


METER = CryptoMeter()


def run(
    n: int,
    profile_responder: cProfile.Profile | None = None,
    clock: Callable[[], float] = time.process_time,
) -> tuple[float, float, float]:
    """Returns (wall seconds, seconds inside the responder, seconds inside the initiator)."""
    a, b = engines()
    t_a = t_b = 0.0
    now = 0.0
    # CPU time of this process by default: the machine is shared, wall time would count
    # other users' load. The metered run uses wall time for both sides of its split.
    pc = clock
    t0 = pc()
    for i in range(n):
        # distinct initiator addresses so the responder sees n different peers
        start = pc()
        a.initiate(f"a{i % PEERS}", None, now)
        t_a += pc() - start
        established = 0
        while True:
            out_a = a.datagrams_to_send()
            if not out_a:
                break
            start = pc()
            if profile_responder:
                profile_responder.enable()
            METER.on = profile_responder is None
            for d in out_a:
                b.receive_datagram(d.data, (d.remote, d.local), now)
            out_b = b.datagrams_to_send()
            while (ev := b.next_event()) is not None:
                established += isinstance(ev, ChildSaEstablished)
            METER.on = False
            if profile_responder:
                profile_responder.disable()
            t_b += pc() - start
            start = pc()
            for d in out_b:
                a.receive_datagram(d.data, (d.remote, d.local), now)
            while (ev := a.next_event()) is not None:
                established += isinstance(ev, ChildSaEstablished)
            t_a += pc() - start
        if established != 2:
            raise SystemExit(f"handshake {i} did not complete")
        now += 0.001
    return pc() - t0, t_b, t_a


def run_batched(n: int) -> tuple[float, float]:
    """Responder CPU per handshake when it handles many peers back to back, as a gateway
    does (the initiators are other machines): all IKE_SA_INIT requests, then all IKE_AUTH
    requests. Returns (seconds in phase 1, seconds in phase 2)."""
    a, b = engines()
    for i in range(n):
        a.initiate(f"a{i % PEERS}", None, 0.0)
    requests = a.datagrams_to_send()
    pt = time.process_time
    t0 = pt()
    for d in requests:
        b.receive_datagram(d.data, (d.remote, d.local), 0.0)
    t1 = pt()
    for d in b.datagrams_to_send():
        a.receive_datagram(d.data, (d.remote, d.local), 0.0)
    auths = a.datagrams_to_send()
    t2 = pt()
    for d in auths:
        b.receive_datagram(d.data, (d.remote, d.local), 0.0)
    t3 = pt()
    established = 0
    while (ev := b.next_event()) is not None:
        established += isinstance(ev, ChildSaEstablished)
    if established != n:
        raise SystemExit(f"batched run: {established} of {n} handshakes completed")
    return t1 - t0, t3 - t2


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_sa(n: int) -> tuple[float, float]:
    """Bytes held per established responder IKE SA (with its one Child SA), after the
    initiator engine is gone: (Python heap by tracemalloc, process RSS growth). RSS also
    counts OpenSSL's AEAD contexts, which tracemalloc cannot see."""
    import gc
    import tracemalloc

    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    a, b = engines()
    for i in range(n):
        a.initiate(f"a{i % PEERS}", None, 0.0)
    for d in a.datagrams_to_send():
        b.receive_datagram(d.data, (d.remote, d.local), 0.0)
    for d in b.datagrams_to_send():
        a.receive_datagram(d.data, (d.remote, d.local), 0.0)
    for d in a.datagrams_to_send():
        b.receive_datagram(d.data, (d.remote, d.local), 0.0)
    b.datagrams_to_send()
    while b.next_event() is not None:
        pass
    del a
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    rss = _rss() - rss0
    if len(b.ike_sas()) != n:
        raise SystemExit("memory run: not all SAs established")
    return held / n, rss / n


def main() -> None:
    global PEERS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="handshakes (default 2000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs, median reported (default 5)")
    ap.add_argument("--peers", type=int, default=64, help="peers (default 64)")
    ap.add_argument("--profile", action="store_true", help="profile the responder side")
    args = ap.parse_args()
    PEERS = args.peers
    run(min(200, args.n))  # warm up imports and caches
    # the median of --repeat runs (each figure on its own)
    runs = [run(args.n) for _ in range(args.repeat)]
    wall, t_b, t_a = (statistics.median(r[k] for r in runs) for k in range(3))
    METER.install()
    try:
        run(args.n)
    finally:
        METER.uninstall()
    crypto = statistics.median(METER.replay_seconds() for _ in range(args.repeat)) / args.n
    per = t_b / args.n
    print(
        f"suite: IKE {IKE}, ESP {ESP}; {args.n} handshakes (IKE_SA_INIT + IKE_AUTH + Child) "
        f"from {PEERS} peers; medians of {args.repeat} runs; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"pair, both sides in one process : {args.n / wall:8.0f} handshakes/s")
    print(
        f"responder side only             : {args.n / t_b:8.0f} handshakes/s "
        f"({t_b / args.n * 1e6:.0f} us each)"
    )
    print(
        f"initiator side only             : {args.n / t_a:8.0f} handshakes/s "
        f"({t_a / args.n * 1e6:.0f} us each)"
    )
    print(f"responder CPU per handshake     : {per * 1e6:8.0f} us, of which")
    print(f"  crypto (HMAC, DH, AEAD in C)  : {crypto * 1e6:8.0f} us")
    print(f"  Python around it              : {(per - crypto) * 1e6:8.0f} us")
    batches = sorted((run_batched(args.n) for _ in range(args.repeat)), key=sum)
    p1, p2 = batches[len(batches) // 2]
    batched = (p1 + p2) / args.n
    print(
        f"responder, many peers in a row  : {1 / batched:8.0f} handshakes/s "
        f"({batched * 1e6:.0f} us: IKE_SA_INIT {p1 / args.n * 1e6:.0f} + "
        f"IKE_AUTH {p2 / args.n * 1e6:.0f}; Python {(batched - crypto) * 1e6:.0f} us)"
    )
    heap, rss = memory_per_sa(args.n)
    print(
        f"memory per responder IKE SA     : {heap / 1024:8.1f} KiB Python heap, "
        f"{rss / 1024:.1f} KiB RSS growth (established, one Child SA)"
    )
    if args.profile:
        prof = cProfile.Profile()
        run(args.n, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
