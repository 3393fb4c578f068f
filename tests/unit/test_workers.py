"""Workers (gateway/workers/) and their socket steering (bpf/reuseport.py), without a
kernel: the SPI encodings and partitions, the classic BPF program run by an interpreter
against the Python decision on sample and random IKE headers, and the supervisor's merges.
The kernel's steering itself is tested in tests/host/test_daemon_workers.py."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bpf import reuseport
from bpf.reuseport import (
    NO_CHOICE,
    owner_of_spi,
    run_cbpf,
    select_worker,
    steering_program,
)
from gateway.control import protocol as control
from gateway.control.client import ControlClient
from gateway.control.protocol import UNKNOWN_SA, ControlError
from gateway.control.server import ControlServer
from gateway.workers.merge import merge_action, merge_stats
from gateway.workers.partition import PartitionedSpis, WorkerIkeSpis, connection_owner, reqid_range
from gateway.xfrm.manager import OwnedRange
from ike.engine import IkeEngine
from tests.support.control import FakeState

INIT, RESP = reuseport.FLAG_INITIATOR, reuseport.FLAG_RESPONSE
IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37


def header(spi_i: bytes, spi_r: bytes, flags: int, exchange: int = IKE_AUTH) -> bytes:
    return spi_i + spi_r + bytes([33, 0x20, exchange, flags]) + struct.pack("!II", 1, 28)


def decide(program: list[reuseport.Insn], payload: bytes) -> int | None:
    got = run_cbpf(program, payload)
    return None if got == NO_CHOICE else got


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 64])
def test_worker_ike_spis_carry_the_index(workers: int) -> None:
    for index in range(workers):
        make = WorkerIkeSpis(index, workers)
        for _ in range(200):
            spi = make()
            assert len(spi) == 8 and owner_of_spi(spi, workers) == index


def test_worker_ike_spis_at_the_top_of_the_range() -> None:
    # the low word rounds up past 2**32-1: it must wrap down, keeping the index
    make = WorkerIkeSpis(2, 3, random=lambda n: b"\xff" * n)
    spi = make()
    assert owner_of_spi(spi, 3) == 2 and int.from_bytes(spi[4:], "big") <= 0xFFFF_FFFF


def _conn(local: str, remote: str, ids: tuple[str, str], ts: tuple[str, str]) -> Any:
    from ike.config import ChildConfig, ConnectionConfig

    return ConnectionConfig(
        name="c",
        local_addrs=(local,),
        remote_addrs=(remote,),
        local_id=ids[0],
        remote_id=ids[1],
        psk=b"0123456789abcdef",
        ike_proposals=("aes256gcm16-prfsha384-x25519",),
        children=(ChildConfig("net", (ts[0],), (ts[1],), ("aes256gcm16",)),),
    )


def test_engine_ike_spis_carry_the_index_also_after_rekeys() -> None:
    """Initiator (worker 1 of 4) and responder (worker 3 of 4) in memory: SPIi, SPIr and
    the new SPIs of IKE rekeys from either side each carry their maker's index."""
    from ike import events as ev

    a = IkeEngine(
        [_conn("192.0.2.1", "192.0.2.2", ("a", "b"), ("10.1.0.0/24", "10.2.0.0/24"))],
        ike_spis=WorkerIkeSpis(1, 4),
    )
    b = IkeEngine(
        [_conn("192.0.2.2", "192.0.2.1", ("b", "a"), ("10.2.0.0/24", "10.1.0.0/24"))],
        ike_spis=WorkerIkeSpis(3, 4),
    )

    def exchange(now: float) -> tuple[list[Any], list[Any]]:
        for _ in range(20):
            moved = False
            for src, dst in ((a, b), (b, a)):
                for d in src.datagrams_to_send():
                    dst.receive_datagram(d.data, (d.remote, d.local), now)
                    moved = True
            if not moved:
                break
        out: tuple[list[Any], list[Any]] = ([], [])
        for engine, events in zip((a, b), out, strict=True):
            while (e := engine.next_event()) is not None:
                events.append(e)
        return out

    uid = a.initiate("c", None, 0.0)
    got_a, got_b = exchange(0.0)
    (est,) = [e for e in got_a if isinstance(e, ev.IkeSaEstablished)]
    assert (owner_of_spi(est.spi_i, 4), owner_of_spi(est.spi_r, 4)) == (1, 3)
    a.rekey_ike_sa(uid, 1.0)
    got_a, got_b = exchange(1.0)
    (rekeyed,) = [e for e in got_a if isinstance(e, ev.IkeSaRekeyed)]
    assert (owner_of_spi(rekeyed.spi_i, 4), owner_of_spi(rekeyed.spi_r, 4)) == (1, 3)
    (peer,) = [e for e in got_b if isinstance(e, ev.IkeSaRekeyed)]
    b.rekey_ike_sa(peer.ike_sa, 2.0)
    got_a, got_b = exchange(2.0)
    (rekeyed,) = [e for e in got_b if isinstance(e, ev.IkeSaRekeyed)]
    assert (owner_of_spi(rekeyed.spi_i, 4), owner_of_spi(rekeyed.spi_r, 4)) == (3, 1)


def test_partitioned_esp_spis_never_collide() -> None:
    allocators = [PartitionedSpis(i, 3) for i in range(3)]
    seen: set[int] = set()
    for i, alloc in enumerate(allocators):
        for _ in range(300):
            spi = alloc.allocate()
            assert spi % 3 == i and 256 <= spi <= 0xFFFF_FFFF and spi not in seen
            seen.add(spi)
    draws = iter([bytes(4), b"\x00\x00\x01\x00", b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"])
    alloc = PartitionedSpis(0, 1, random=lambda n: next(draws))
    assert alloc.allocate() == 256  # 0 is reserved (RFC 4303 §2.1): drawn again
    assert alloc.allocate() == 512  # 256 is in use
    alloc.release(256)


def test_reqid_ranges_partition_ours() -> None:
    whole = OwnedRange()
    for workers in (1, 2, 3, 64):
        ranges = [reqid_range(i, workers) for i in range(workers)]
        assert ranges[0].first == whole.first
        assert sum(r.size for r in ranges) == whole.size
        for left, right in zip(ranges, ranges[1:], strict=False):
            assert left.first + left.size == right.first


def test_connection_owner_is_stable() -> None:
    # crc32, not hash(): the same in every process and every run
    assert [connection_owner(n, 2) for n in ("east", "west", "lg")] == [
        connection_owner(n, 2) for n in ("east", "west", "lg")
    ]
    assert connection_owner("east", 1) == 0
    assert {connection_owner(f"c{i}", 4) for i in range(40)} == {0, 1, 2, 3}


# --------------------------------------------------------------------------- steering


def test_decisions_on_sample_packets() -> None:
    mine = WorkerIkeSpis(1, 2)()
    theirs = bytes.fromhex("0123456789abcdef")
    zero = bytes(8)
    live = [0, 1]
    cases = [
        # IKE_SA_INIT request: SPIr zero -> hash of SPIi over the live workers
        (header(theirs, zero, INIT, IKE_SA_INIT), int.from_bytes(theirs[:4], "big") % 2),
        # peer initiated, we answered: our SPI is SPIr
        (header(theirs, mine, INIT), 1),
        # we initiated: responses and the peer's requests carry our SPI as SPIi
        (header(mine, theirs, RESP), 1),
        (header(mine, theirs, 0, INFORMATIONAL), 1),
        # COOKIE / INVALID_KE answer to our IKE_SA_INIT: SPIr zero, Response set
        (header(mine, zero, RESP, IKE_SA_INIT), 1),
    ]
    for payload, want in cases:
        assert select_worker(payload, nat_t=False, workers=2, live=live) == want
        assert decide(steering_program(nat_t=False, workers=2, live=live), payload) == want
        marked = bytes(4) + payload
        assert select_worker(marked, nat_t=True, workers=2, live=live) == want
        assert decide(steering_program(nat_t=True, workers=2, live=live), marked) == want


def test_no_choice_for_what_is_not_ike() -> None:
    for nat_t in (False, True):
        program = steering_program(nat_t=nat_t, workers=2, live=[0, 1])
        for payload in (b"", b"\xff", bytes(27), bytes(31)[: 27 + 4 * nat_t]):
            assert select_worker(payload, nat_t=nat_t, workers=2, live=[0, 1]) is None
            assert run_cbpf(program, payload) == NO_CHOICE
    # ESP in UDP on 4500 (a non-zero SPI where the marker would be): any socket decaps it
    esp = struct.pack("!II", 0xC0000001, 1) + bytes(60)
    program = steering_program(nat_t=True, workers=2, live=[0, 1])
    assert run_cbpf(program, esp) == NO_CHOICE


def test_new_ike_sas_only_for_live_workers() -> None:
    zero = bytes(8)
    for live in ([1], [0, 2], [2], []):
        program = steering_program(nat_t=False, workers=3, live=live)
        seen = set()
        for _ in range(100):
            payload = header(os.urandom(8), zero, INIT, IKE_SA_INIT)
            got = decide(program, payload)
            assert got == select_worker(payload, nat_t=False, workers=3, live=live)
            seen.add(got)
        assert seen == (set(live) if live else {None})
    # an existing IKE SA still goes to its owner, running or not (nobody else knows it)
    owned = header(os.urandom(8), WorkerIkeSpis(0, 3)(), INIT)
    assert decide(steering_program(nat_t=False, workers=3, live=[1, 2]), owned) == 0


@given(
    payload=st.binary(min_size=0, max_size=48),
    workers=st.integers(1, 9),
    nat_t=st.booleans(),
    zero_spi_r=st.booleans(),
    seed=st.integers(0, 2**16),
)
# a response with SPIr zero and the Initiator flag set: the owner of SPIi (found by this test)
@example(
    payload=bytes(7) + b"\x01" + bytes(11) + b"\x38" + bytes(8),
    workers=2,
    nat_t=False,
    zero_spi_r=False,
    seed=0,
)
def test_program_matches_the_model(
    payload: bytes, workers: int, nat_t: bool, zero_spi_r: bool, seed: int
) -> None:
    rng = random.Random(seed)
    live = sorted(rng.sample(range(workers), rng.randint(0, workers)))
    o = 4 if nat_t else 0
    if nat_t and rng.random() < 0.8:
        payload = bytes(4) + payload[4:]
    if zero_spi_r and len(payload) >= o + 16:
        payload = payload[: o + 8] + bytes(8) + payload[o + 16 :]
    program = steering_program(nat_t=nat_t, workers=workers, live=live)
    assert decide(program, payload) == select_worker(
        payload, nat_t=nat_t, workers=workers, live=live
    )


def test_program_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        steering_program(nat_t=False, workers=0, live=[])
    with pytest.raises(ValueError):
        steering_program(nat_t=False, workers=2, live=[2])
    with pytest.raises(ValueError):
        steering_program(nat_t=False, workers=2, live=[1, 0])


# --------------------------------------------------------------------------- merging


def test_merge_stats_sums_workers() -> None:
    rows = [
        {
            "ike_sas": {"ESTABLISHED": 2},
            "child_sas": 2,
            "handshakes": 5,
            "transport": {"received": 10},
            "engine": {"unknown_spi": 1},
            "xfrm_errors": {"XfrmInNoStates": 3},
        },
        {
            "ike_sas": {"ESTABLISHED": 1, "CONNECTING": 1},
            "child_sas": 1,
            "handshakes": 2,
            "transport": {"received": 4},
            "engine": {"unknown_spi": 0},
            "xfrm_errors": {"XfrmInNoStates": 3},
        },
    ]
    merged = merge_stats(rows)
    assert merged["ike_sas"] == {"ESTABLISHED": 3, "CONNECTING": 1}
    assert (merged["child_sas"], merged["handshakes"]) == (3, 7)
    assert merged["transport"] == {"received": 14}
    assert merged["xfrm_errors"] == {"XfrmInNoStates": 3}  # one kernel, read twice


def test_merge_stats_merges_tunnels_and_hooks() -> None:
    """Route-based tunnels: one row per interface (the kernel's fields as any worker read
    them, Child SAs and routes added up); updown counters summed."""
    row = {"interface": "ipsec-pri", "if_id": 1, "up": True, "mtu": 1446, "tx_packets": 9}
    rows = [
        {"tunnels": [{**row, "children": 1, "routes": 2, "connections": ["pri"]}],
         "hooks": {"ok": 2, "failed": 1, "running": 0}, "tunnel_errors": 1},
        {"tunnels": [{**row, "children": 0, "routes": 0, "connections": []}],
         "hooks": {"ok": 1, "failed": 0, "running": 1}},
    ]  # fmt: skip
    merged = merge_stats(rows)
    (tunnel,) = merged["tunnels"]
    assert (tunnel["children"], tunnel["routes"], tunnel["connections"]) == (1, 2, ["pri"])
    assert (tunnel["mtu"], tunnel["tx_packets"]) == (1446, 9)
    assert merged["hooks"] == {"ok": 3, "failed": 1, "running": 1}
    assert merged["tunnel_errors"] == 1
    assert "tunnels" not in merge_stats([{}, {}])


def test_merge_stats_merges_the_handshake_histograms() -> None:
    """Each worker's histogram (as Daemon.stats reports it) adds up into one that the
    supervisor's exporter shows (before: empty with workers > 1)."""
    from gateway.metrics import DurationHistogram

    rows = []
    for seconds in ((0.004, 0.2), (0.2, 40.0, 0.05)):
        h = DurationHistogram()
        for s in seconds:
            h.observe(s)
        snap = h.snapshot()
        rows.append(
            {
                "handshake_durations": {
                    "bounds": list(snap.bounds),
                    "counts": list(snap.counts),
                    "sum": snap.total,
                }
            }
        )
    rows.append({})  # a worker without one (an older reply): nothing to add
    merged = merge_stats(rows)["handshake_durations"]
    both = DurationHistogram()
    for s in (0.004, 0.2, 0.2, 40.0, 0.05):
        both.observe(s)
    expect = both.snapshot()
    assert merged["bounds"] == list(expect.bounds)
    assert merged["counts"] == list(expect.counts) and merged["counts"][-1] == 5
    assert merged["sum"] == pytest.approx(expect.total)
    assert "handshake_durations" not in merge_stats([{}, {}])


async def test_supervisor_metrics_show_the_merged_histogram(tmp_path: Any) -> None:
    """The supervisor's exporter snapshot carries the workers' merged histogram (the
    exporter calls metrics_snapshot from its own thread)."""
    from gateway.config.reader import parse_config
    from gateway.metrics import DurationHistogram
    from gateway.workers.supervisor import Supervisor, SupervisorOptions

    h = DurationHistogram()
    for s in (0.01, 0.3, 2.0):
        h.observe(s)
    snap = h.snapshot()
    row = {"bounds": list(snap.bounds), "counts": list(snap.counts), "sum": snap.total}
    config = parse_config(f'[gateway]\ncontrol_socket = "{tmp_path}/c.sock"\nworkers = 2\n')
    sup = Supervisor(config, SupervisorOptions("gw.toml"), zygote=None)  # type: ignore[arg-type]
    sup.loop = asyncio.get_running_loop()

    async def list_sas() -> list[dict[str, Any]]:
        return []

    async def stats() -> dict[str, Any]:
        return merge_stats([{"handshake_durations": row}, {"handshake_durations": row}])

    sup.list_sas = list_sas  # type: ignore[method-assign]
    sup.stats = stats  # type: ignore[method-assign]
    got = await asyncio.to_thread(sup.metrics_snapshot)
    assert got.handshake_durations.count == 6
    assert got.handshake_durations.counts == tuple(2 * c for c in snap.counts)
    assert got.handshake_durations.total == pytest.approx(2 * snap.total)


def test_merge_action() -> None:
    none_here = ControlError(UNKNOWN_SA, "east has no established SA to rekey")
    done = {"message": "rekey east: 1 IKE SA(s) rekeyed"}
    assert merge_action([(0, none_here), (1, done)]) == done
    with pytest.raises(ControlError) as exc:
        merge_action([(0, none_here), (1, none_here)])
    assert exc.value.code == UNKNOWN_SA
    failed = ControlError("failed", "rekey east: no outcome within 5s")

    class W:
        index = 1

    with pytest.raises(ControlError) as exc:
        merge_action([(0, done), (W(), failed)])
    assert exc.value.code == "failed" and "(worker 1)" in exc.value.message


# --------------------------------------------------------------------------- the worker link


class SlowState(FakeState):
    """FakeState whose initiate waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def initiate(self, name: str, timeout: float) -> Any:
        await self.release.wait()
        return await super().initiate(name, timeout)


async def test_peer_link_answers_concurrently_and_pushes_events_only_when_subscribed() -> None:
    state = SlowState()
    server = ControlServer(state, "unused-path-never-created")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    serving = await server.serve_peer(ours)
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    client = ControlClient(reader, writer)
    try:
        slow = asyncio.create_task(client.initiate("east"))
        # a slow request does not hold up the others (the public socket answers in order)
        assert (await asyncio.wait_for(client.stats(), 5))["handshakes"] == 1
        assert not slow.done()
        state.release.set()
        assert (await asyncio.wait_for(slow, 5))["message"] == "initiate east: ok"

        server.publish("ike-established", connection="east")  # nobody subscribed: dropped
        assert await client.call("subscribe") == {"subscribed": True}
        server.publish("child-established", connection="east")
        assert await client.call("unsubscribe") == {"subscribed": False}
        server.publish("ike-deleted", connection="east")  # unsubscribed again: dropped
        assert await client.call("subscribe") == {"subscribed": True}
        server.publish("ike-failed", connection="east")
        events = client.events()
        got = [(await anext(events))["type"] for _ in range(2)]
        assert got == ["child-established", "ike-failed"]
        # malformed lines still get their error reply on the link
        with pytest.raises(ControlError) as exc:
            await client.call("no-such-command")
        assert exc.value.code == control.UNKNOWN_COMMAND
    finally:
        await client.close()
        await asyncio.wait_for(serving, 5)  # ends when the supervisor's side closes
