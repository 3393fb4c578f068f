"""updown hooks with real programs (/bin/sh scripts) on the host: ordering per Child,
bounded concurrency, timeout kill by process group, failures counted, output logged
without secrets, a clean environment, and an event loop that never waits for a hook."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from pathlib import Path

import pytest

from gateway.routing.hooks import ChildInfo, HookEvent, HookResult, HookRunner
from gateway.xfrm.spec import TrafficSelector


def info(child: str = "net", **kw: object) -> ChildInfo:
    base: dict[str, object] = dict(
        connection="site",
        child=child,
        local=ipaddress.ip_address("192.0.2.1"),
        remote=ipaddress.ip_address("192.0.2.2"),
        reqid=1,
        spi_in=0xC0000001,
        spi_out=0xC0000002,
        local_ts=(TrafficSelector.parse("10.1.0.0/24"),),
        remote_ts=(TrafficSelector.parse("10.2.0.0/24"),),
    )
    base.update(kw)
    return ChildInfo(**base)  # type: ignore[arg-type]


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_order_per_child_and_bounded_concurrency(tmp_path: Path) -> None:
    """A down never overtakes its up even when the up is slow; Childs run side by side
    up to max_concurrent; with max_concurrent=1 no two programs ever overlap."""
    trace = tmp_path / "trace"
    prog = script(
        tmp_path,
        "updown",
        f'echo "$GW_CHILD:$GW_EVENT:start" >> {trace}\n'
        'case "$GW_EVENT" in up) sleep 0.4;; esac\n'
        f'echo "$GW_CHILD:$GW_EVENT:end" >> {trace}\n',
    )

    async def scenario(max_concurrent: int) -> HookRunner:
        trace.unlink(missing_ok=True)
        runner = HookRunner(max_concurrent=max_concurrent, timeout=10)
        runner.submit(prog, HookEvent("up", info("a")))
        runner.submit(prog, HookEvent("down", info("a"), reason="delete"))
        runner.submit(prog, HookEvent("up", info("b")))
        assert runner.counters.queued == 3
        assert await runner.drain(20)
        return runner

    runner = asyncio.run(scenario(4))
    got = lines(trace)
    a = [x for x in got if x.startswith("a:")]
    assert a == ["a:up:start", "a:up:end", "a:down:start", "a:down:end"]
    # b ran while a's slow up was running (another Child, not queued behind it)
    assert got.index("b:up:start") < got.index("a:up:end")
    assert (runner.counters.started, runner.counters.ok, runner.counters.queued) == (3, 3, 0)

    asyncio.run(scenario(1))
    got = lines(trace)
    for i in range(0, len(got), 2):  # strictly start, end, start, end...
        assert got[i].endswith(":start") and got[i + 1] == got[i].replace("start", "end")


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    """A hook that ignores SIGTERM and has a child is killed with its child after the
    timeout plus grace; the run is counted as a timeout and reported."""
    pids = tmp_path / "pids"
    prog = script(
        tmp_path,
        "hang",
        f"trap '' TERM\nsleep 60 &\necho \"$$ $!\" > {pids}\nwait\nwait\n",
    )
    results: list[HookResult] = []

    async def scenario() -> None:
        runner = HookRunner(timeout=0.5, grace=0.3, on_result=results.append)
        runner.submit(prog, HookEvent("up", info()))
        assert await runner.drain(10)
        assert runner.counters.timeout == 1 and runner.counters.running == 0

    start = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - start < 5
    (result,) = results
    assert result.status == "timeout" and result.returncode == -9
    assert 0.7 <= result.duration < 3
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever reaps orphans here does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_failures_are_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = script(tmp_path, "fail", "echo failing >&2\nexit 3\n")
    results: list[HookResult] = []

    async def scenario() -> HookRunner:
        runner = HookRunner(on_result=results.append)
        runner.submit(failing, HookEvent("up", info("a")))
        runner.submit(str(tmp_path / "missing"), HookEvent("up", info("b")))
        runner.submit([str(tmp_path)], HookEvent("up", info("c")))  # a directory
        assert await runner.drain(10)
        # without an on_result the runner logs each result itself
        logging_runner = HookRunner()
        logging_runner.submit(failing, HookEvent("up", info("a")))
        assert await logging_runner.drain(10)
        return runner

    with caplog.at_level(logging.INFO, logger="gateway.hooks"):
        runner = asyncio.run(scenario())
    c = runner.counters
    assert (c.started, c.ok, c.failed, c.error) == (1, 0, 1, 2)
    by_child = {r.event.child.child: r for r in results}
    assert by_child["a"].status == "failed" and by_child["a"].returncode == 3
    assert by_child["b"].status == "error" and "No such file" in by_child["b"].detail
    assert by_child["c"].status == "error"
    text = caplog.text
    assert "event=hook-failed connection=site child=a verb=up-client" in text and "rc=3" in text
    assert "line='failing'" in text  # stderr is captured too


def test_output_is_logged_redacted_bounded_and_env_is_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_TEST_SECRET", "daemon-env-value")
    prog = script(
        tmp_path,
        "chatty",
        "env | sort\n"
        "echo 'psk is hunter2'\n"
        "i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); done\n",
    )

    async def scenario() -> None:
        runner = HookRunner(redact=["hunter2"], max_output_lines=60)
        runner.submit(prog, HookEvent("up", info()))
        assert await runner.drain(10)

    with caplog.at_level(logging.INFO, logger="gateway.hooks"):
        asyncio.run(scenario())
    text = caplog.text
    assert "psk is <redacted>" in text and "hunter2" not in text
    assert "PLUTO_VERB=up-client" in text and "GW_CONNECTION=site" in text
    # nothing of the daemon's own environment reaches the program
    assert "GATEWAY_TEST_SECRET" not in text and "daemon-env-value" not in text
    assert "lines_not_logged=" in text
    logged = [r for r in caplog.records if "event=hook-output" in r.getMessage()]
    assert len(logged) == 61  # 60 lines and the note about the rest


def test_event_loop_never_waits_for_hooks(tmp_path: Path) -> None:
    """While hooks sleep, time out and get killed, the loop keeps ticking every 10 ms."""
    slow = script(tmp_path, "slow", "sleep 0.3\n")
    hang = script(tmp_path, "hang", "trap '' TERM\nsleep 30\n")

    async def scenario() -> float:
        runner = HookRunner(timeout=0.6, grace=0.2)
        worst = 0.0
        last = time.monotonic()
        for i in range(3):
            runner.submit(slow, HookEvent("up", info(f"s{i}")))
        runner.submit(hang, HookEvent("up", info("h")))
        while runner.counters.queued or runner.counters.running or not runner.counters.started:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now
        assert await runner.drain(5)
        assert runner.counters.ok == 3 and runner.counters.timeout == 1
        return worst

    assert asyncio.run(scenario()) < 0.25


def test_close_runs_queued_downs_then_kills_the_rest(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    prog = script(tmp_path, "p", f'echo "$GW_EVENT" >> {trace}\n')
    hang = script(tmp_path, "hang", "sleep 30\n")

    async def scenario() -> HookRunner:
        runner = HookRunner(timeout=60)
        runner.submit(prog, HookEvent("down", info("a"), reason="shutdown"))
        runner.submit(hang, HookEvent("down", info("b"), reason="shutdown"))
        start = time.monotonic()
        await runner.close(timeout=0.5)
        assert time.monotonic() - start < 5
        return runner

    runner = asyncio.run(scenario())
    assert lines(trace) == ["down"]
    assert runner.counters.running == 0 and runner.counters.failed == 1
