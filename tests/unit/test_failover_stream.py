"""The failover measurement library's arithmetic (tests/support/failover.py); the streams
themselves run in tests/host/test_failover_stream_host.py."""

from __future__ import annotations

import pytest

from tests.support.failover import LossWindow, Stall, _pattern, loss_windows, stalls


def test_loss_windows_from_send_times() -> None:
    send = [i * 0.01 for i in range(10)]  # 100/s
    assert loss_windows(send, range(10), 0.01) == ()
    (w,) = loss_windows(send, [0, 1, 2, 6, 7, 8, 9], 0.01)
    assert w == LossWindow(3, 5, 0.03, 0.06)
    assert w.count == 3 and w.duration == pytest.approx(0.03)
    first, last = loss_windows(send, [2, 3, 4, 5, 6, 7], 0.01)
    assert (first.first, first.last, first.start, first.end) == (0, 1, 0.0, 0.02)
    # a gap that lasts to the end of the stream ends one interval after its last datagram
    assert (last.first, last.last) == (8, 9) and last.end == pytest.approx(0.10)
    assert loss_windows([], [], 0.01) == ()


def test_stalls_are_gaps_above_the_threshold() -> None:
    assert stalls([0.0, 0.01, 0.02], 0.2) == ()
    assert stalls([0.0, 0.01, 0.5, 0.51, 1.5], 0.2) == (Stall(0.01, 0.5), Stall(0.51, 1.5))
    assert stalls([], 0.2) == ()


def test_tcp_pattern_is_position_dependent() -> None:
    whole = _pattern(0, 100_000)
    assert whole[1000:3000] == _pattern(1000, 2000)
    assert _pattern(251, 10) == _pattern(0, 10)  # the cycle
    assert _pattern(0, 64) != _pattern(64, 64)  # a repeated block would show
