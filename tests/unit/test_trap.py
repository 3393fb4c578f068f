"""The trap state machine (gateway/daemon/trap_table.py) with a fake clock: one initiation per Child
however many ACQUIREs arrive, backoff doubling after failures in a row and starting over
after a success, back to TRAPPED when the last Child SA goes."""

from __future__ import annotations

import pytest

from gateway.daemon.trap_table import (
    BACKOFF,
    BACKOFF_FIRST,
    BACKOFF_MAX,
    CONNECT_TIMEOUT,
    CONNECTING,
    INSTALLED,
    TRAPPED,
    TrapTable,
)
from gateway.dataplane.base import TrapSpec

SPEC = TrapSpec(
    "east", "net", "192.0.2.1", "192.0.2.2", ("10.1.0.0/24",), ("10.2.0.0/24",), "tunnel"
)
KEY = SPEC.key
REQID = 0x4E470001


def table() -> TrapTable:
    t = TrapTable()
    t.add(SPEC, REQID)
    return t


def test_acquire_storm_initiates_once() -> None:
    t = table()
    first = t.acquire(REQID, 100.0)
    assert first is not None and first.state == CONNECTING
    t.initiated(KEY, 7)
    # the kernel asks again for other flows while the SA is being negotiated
    assert all(t.acquire(REQID, 100.0 + i / 10) is None for i in range(50))
    t.established(KEY)
    assert t.acquire(REQID, 200.0) is None  # an SA is up: nothing to do
    trap = t.get(KEY)
    assert trap is not None
    assert (trap.state, trap.acquires, trap.coalesced) == (INSTALLED, 52, 51)
    assert trap.as_dict()["state"] == "INSTALLED" and trap.as_dict()["reqid"] == "0x4e470001"


def test_unknown_reqid_is_not_ours() -> None:
    assert table().acquire(REQID + 1, 1.0) is None


def test_backoff_doubles_after_each_failure_and_resets_after_success() -> None:
    t = table()
    now = 1000.0
    delays = []
    for _ in range(9):
        trap = t.acquire(REQID, now)
        assert trap is not None, "the backoff has passed: initiate again"
        t.initiated(KEY, 1)
        t.failed(KEY, now)
        assert trap.state == BACKOFF and trap.retry_at is not None
        delays.append(trap.retry_at - now)
        # ACQUIREs during the backoff are coalesced
        assert t.acquire(REQID, trap.retry_at - 0.01) is None
        now = trap.retry_at
    assert delays[:4] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST, 8 * BACKOFF_FIRST]
    assert max(delays) == BACKOFF_MAX and delays[-1] == BACKOFF_MAX
    trap = t.acquire(REQID, now)
    assert trap is not None
    t.established(KEY)
    assert (trap.failures, trap.retry_at) == (0, None)
    t.down(KEY)
    assert trap.state == TRAPPED
    assert t.acquire(REQID, now + 1) is trap
    t.failed(KEY, now + 1)
    assert trap.retry_at == pytest.approx(now + 1 + BACKOFF_FIRST)


def test_ike_sa_gone_fails_only_its_initiations() -> None:
    t = table()
    other = TrapSpec(
        "west", "net", "192.0.2.1", "192.0.2.3", ("10.1.0.0/24",), ("10.3.0.0/24",), "tunnel"
    )
    t.add(other, REQID + 5)
    assert t.acquire(REQID, 1.0) and t.acquire(REQID + 5, 1.0)
    t.initiated(KEY, 1)
    t.initiated(other.key, 2)
    t.ike_sa_gone(1, 2.0)
    a, b = t.get(KEY), t.get(other.key)
    assert a is not None and b is not None
    assert (a.state, b.state) == (BACKOFF, CONNECTING)
    # a failure report for a Child that is not connecting changes nothing
    t.failed(other.key, 3.0)
    t.established(other.key)
    t.failed(other.key, 4.0)
    assert b.state == INSTALLED


def test_remove_forgets_the_reqid() -> None:
    t = table()
    assert KEY in t and len(t) == 1
    assert t.remove(KEY) is not None
    assert t.acquire(REQID, 1.0) is None and len(t) == 0 and t.remove(KEY) is None


def test_an_initiation_without_outcome_stops_holding_acquires_back() -> None:
    t = table()
    assert t.acquire(REQID, 10.0) is not None
    assert t.acquire(REQID, 10.0 + CONNECT_TIMEOUT) is None
    again = t.acquire(REQID, 10.1 + CONNECT_TIMEOUT)
    assert again is not None and again.state == CONNECTING
