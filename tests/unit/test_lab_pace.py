"""Deadlines scaled by the measured slowness (gateway/lab/pace.py), and the lab's
host/agent protocol pieces that make `gateway lab up` hold on a busy machine
(gateway/lab/vmmode.py, gateway/lab/local.py), without a VM: the agent reports up only
once it listens, the host retries a reset/refused/empty answer until its deadline and
says what it waits for, a silent or failed step is named with its logs, two commands
never change one lab at once, and a second `up` leaves a running lab alone."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.lab import local, pace, vmmode
from gateway.lab.local import Lab, LabError, LabOptions, describe_running, lab_lock
from gateway.lab.pace import Pace, StepFailed, describe, measure_factor


def test_budgets_scale_with_the_factor_and_never_go_below_the_floor() -> None:
    assert Pace(factor=30.0).budget(4.0) == 120.0
    assert Pace(factor=1.0).budget(4.0) == pace.FLOOR_SECONDS
    assert measure_factor(lambda: pace.REFERENCE_SECONDS * 25) == pytest.approx(25.0)
    assert measure_factor(lambda: pace.REFERENCE_SECONDS / 4) == 1.0  # faster: never < 1
    assert measure_factor(lambda: 1e6) == pace.MAX_FACTOR


def test_the_calibration_step_is_short_here() -> None:
    assert pace.calibration_step() < 2.0


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace, "FLOOR_SECONDS", 0.05)


def test_a_deadline_grows_once_the_machine_is_found_slower(quick: None) -> None:
    records: list[dict[str, object]] = []
    slowness = iter([3.0, 3.0])
    p = Pace(factor=1.0, report=records.append, measure=lambda: next(slowness))
    d = p.deadline("tunnel", 0.1)
    assert d.budget == pytest.approx(0.1)
    time.sleep(0.12)
    assert not d.expired()  # re-measured: three times slower, so three times the budget
    assert d.budget == pytest.approx(0.3)
    assert records == [{"step": "tunnel", "event": "extend", "budget": 0, "factor": 3.0}]
    assert p.factor == 3.0
    time.sleep(0.2)
    assert d.expired()  # no slower than that: it ran out
    err = d.fail("no tunnel", "gw-west: log line")
    assert err.step == "tunnel"
    assert "no tunnel (waited 0 s of a 0 s budget: 0.1 reference s x 3.0," in str(err)
    assert str(err).endswith("gw-west: log line")


def test_a_step_reports_start_and_done_and_names_any_failure(quick: None) -> None:
    records: list[dict[str, object]] = []
    p = Pace(factor=2.0, report=records.append, measure=lambda: 2.0)
    with p.step("namespaces", "building namespaces", 3.0):
        pass
    assert records[0] == {
        "step": "namespaces",
        "event": "start",
        "text": "building namespaces",
        "budget": 6,
        "factor": 2.0,
    }
    assert records[1]["event"] == "done" and records[1]["step"] == "namespaces"
    with pytest.raises(StepFailed) as exc, p.step("gw-east", "starting gw-east", 1.0):
        raise GatewayError("ip netns add: File exists")
    assert exc.value.step == "gw-east"
    assert str(exc.value) == "step 'gw-east' failed: ip netns add: File exists"
    assert records[-1]["event"] == "fail" and records[-1]["step"] == "gw-east"
    assert describe(records[0]) == "lab: building namespaces (up to 6 s)"
    assert describe({**records[0], "where": "vm"}) == "  vm: building namespaces (up to 6 s)"
    assert describe(records[1]) is None


# ---------------------------------------------------------------------- host side


def _server(behaviour: list[str], answer: dict[str, Any]) -> tuple[int, threading.Thread]:
    """A TCP server on loopback acting out `behaviour` per connection: "reset" (RST, as
    qemu's forwarding does when the guest refuses), "close" (accept and close without an
    answer), "answer" (read the request, send `answer`)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        with srv:
            for what in behaviour:
                conn, _ = srv.accept()
                with conn:
                    if what == "reset":
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    elif what == "answer":
                        request = json.loads(conn.makefile().readline())
                        assert request["token"] == "t0k"
                        conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def _vm_lab(tmp_path: Path, port: int, factor: float = 1.0) -> vmmode.VmLab:
    """A VM lab's state pointing at `port` (no VM: "its" pid is this test's)."""
    opts = LabOptions(directory=tmp_path / "lab")
    opts.directory.mkdir()
    state = {
        "mode": "vm",
        "vm_pid": os.getpid(),
        "lab_port": port,
        "control_port": port,
        "token": "t0k",
        "factor": factor,
        "host_factor": 1.0,
        "kernel": "vmlinuz",
        "started": time.time(),
    }
    (opts.directory / "state.json").write_text(json.dumps(state))
    return vmmode.VmLab(opts)


def test_requests_retry_resets_and_empty_answers_and_say_what_they_wait_for(
    tmp_path: Path,
) -> None:
    port, thread = _server(["reset", "close", "answer"], {"ok": True, "result": {"up": True}})
    lab = _vm_lab(tmp_path, port)
    said: list[str] = []
    assert lab.request("status", progress=said.append) == {"up": True}
    thread.join(5)
    assert len(said) == 1, said  # said once, not per retry
    assert said[0].startswith(
        f"lab: waiting for the lab agent in the VM to answer on 127.0.0.1:{port} ("
    )


def test_a_request_gives_up_at_its_deadline_naming_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None
) -> None:
    with socket.socket() as s:  # a port nobody listens on: refused every time
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = _vm_lab(tmp_path, port)
    monkeypatch.setattr(pace, "measure_factor", lambda: 1.0)
    monkeypatch.setattr(vmmode, "measure_factor", lambda: 1.0)
    started = time.monotonic()
    with pytest.raises(LabError) as exc:
        lab.request("status", reference_seconds=0.5, progress=lambda line: None)
    assert time.monotonic() - started < 10
    text = str(exc.value)
    assert f"did not answer 'status' on 127.0.0.1:{port} within 0 s" in text
    assert "(last: Connection refused)" in text
    assert "--- lab agent log" in text and "--- VM console" in text


def test_the_agent_reports_up_only_once_both_ports_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    monkeypatch.setattr(vmmode, "GUEST_ADDR", "127.0.0.1")
    monkeypatch.setattr(vmmode, "GUEST_LAB_PORT", ports[0])
    monkeypatch.setattr(vmmode, "GUEST_CONTROL_PORT", ports[1])

    class FakeLab:
        downs = 0

        def status(self) -> dict[str, Any]:
            return {"up": True}

        def down(self) -> list[str]:
            FakeLab.downs += 1
            return ["removed"]

    seen: list[str] = []

    def listening() -> None:
        for port in ports:  # at the moment of the report, both ports accept connections
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        seen.append("listening")
        threading.Thread(target=ask_down, daemon=True).start()

    replies: list[dict[str, Any]] = []

    def ask_down() -> None:
        for cmd in ("status", "down"):
            data = vmmode._ask(ports[0], {"token": "t0k", "cmd": cmd}, 10)
            replies.append(json.loads(data))

    fake: Any = FakeLab()
    asyncio.run(asyncio.wait_for(vmmode._serve(fake, "t0k", LabOptions(), listening), 30))
    assert seen == ["listening"]
    assert replies == [
        {"ok": True, "result": {"up": True}},
        {"ok": True, "result": {"done": ["removed"]}},
    ]
    assert FakeLab.downs == 1


class FakeProc:
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def _records(shared: Path, *records: dict[str, Any]) -> None:
    with open(shared / "progress.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def vm_lab(tmp_path: Path) -> Iterator[vmmode.VmLab]:
    lab = vmmode.VmLab(LabOptions(directory=tmp_path / "lab"))
    lab.shared.mkdir(parents=True)
    (lab.shared / "agent.log").write_text("agent: slowness 31.0\n")
    (lab.shared / "console.log").write_text("[    0.000000] Linux version 6.1\n")
    yield lab


def test_the_host_relays_the_agents_steps_until_it_reports_up(
    vm_lab: vmmode.VmLab,
) -> None:
    _records(
        vm_lab.shared,
        {"step": "calibrate", "event": "calibrated", "factor": 31.0},
        {"step": "tunnel", "event": "start", "text": "waiting for the tunnel", "budget": 124},
        {"step": "tunnel", "event": "done", "elapsed": 3.1},
    )
    (vm_lab.shared / "up.json").write_text(json.dumps({"ok": True, "factor": 31.0}))
    seen: list[dict[str, object]] = []
    host = Pace(factor=1.0, report=seen.append)
    proc: Any = FakeProc()
    result = vm_lab._follow_agent(proc, host.deadline("boot", 10), host)
    assert result == {"ok": True, "factor": 31.0}
    assert [r["event"] for r in seen] == ["done", "calibrated", "start", "done"]
    assert seen[0]["step"] == "boot"
    assert all(r.get("where") == "vm" for r in seen[1:])
    assert describe(seen[2]) == "  vm: waiting for the tunnel (up to 124 s)"


def test_a_failure_inside_the_vm_names_the_step_and_shows_its_logs(
    vm_lab: vmmode.VmLab,
) -> None:
    _records(vm_lab.shared, {"step": "tunnel", "event": "start", "text": "t", "budget": 9})
    (vm_lab.shared / "up.json").write_text(
        json.dumps({"ok": False, "step": "tunnel", "error": "no tunnel", "logs": "--- gw-west log"})
    )
    proc: Any = FakeProc()
    with pytest.raises(StepFailed) as exc:
        vm_lab._follow_agent(proc, Pace().deadline("boot", 10), Pace())
    assert exc.value.step == "tunnel"
    assert str(exc.value) == "step 'tunnel' failed: (inside the VM) no tunnel\n--- gw-west log"


def test_a_silent_agent_fails_the_step_it_was_in(
    vm_lab: vmmode.VmLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vmmode, "STEP_MARGIN", 0.3)
    _records(vm_lab.shared, {"step": "gw-west", "event": "start", "text": "t", "budget": 0})
    proc: Any = FakeProc()
    with pytest.raises(StepFailed) as exc:
        vm_lab._follow_agent(proc, Pace().deadline("boot", 10), Pace())
    assert exc.value.step == "gw-west"
    assert "the lab agent in the VM went silent" in str(exc.value)
    assert "agent: slowness 31.0" in str(exc.value)  # the agent's log
    assert "Linux version 6.1" in str(exc.value)  # the VM console's


def test_a_vm_that_never_starts_its_agent_fails_the_boot_with_the_console(
    vm_lab: vmmode.VmLab, quick: None
) -> None:
    host = Pace(factor=1.0, measure=lambda: 1.0)
    proc: Any = FakeProc()
    with pytest.raises(StepFailed) as exc:
        vm_lab._follow_agent(proc, host.deadline("boot", 0.2), host)
    assert exc.value.step == "boot"
    assert "the VM did not start the lab agent" in str(exc.value)
    assert "Linux version 6.1" in str(exc.value)


# ---------------------------------------------------------------------- one lab at a time


def test_two_commands_never_change_one_lab_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    with lab_lock(directory, "up"):
        with pytest.raises(LabError) as exc, lab_lock(directory, "down"):
            pass
        assert f"`gateway lab up` (pid {os.getpid()}) is changing this lab" in str(exc.value)
        local.remove_lab_directory(directory)  # as `down` does, holding the lock
    with lab_lock(directory, "up"):  # taken again on a new lock file
        assert (directory / "lock").read_text() == f"{os.getpid()} up\n"


def test_a_second_up_says_what_is_up_and_leaves_it_alone(tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    directory.mkdir()
    state = {"mode": "vm", "peer": "gateway", "nat": False, "vm_pid": os.getpid(),
             "started": time.time()}  # fmt: skip
    (directory / "state.json").write_text(json.dumps(state))
    before = sorted(p.name for p in directory.iterdir())
    env = dict(os.environ, GATEWAY_LAB_DIR=str(directory))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "lab", "up", "--no-tui"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("gateway lab: a lab is already up (in a VM since ")
    assert "`gateway lab tui` opens its console" in proc.stderr
    assert json.loads((directory / "state.json").read_text()) == state
    assert sorted(p.name for p in directory.iterdir()) == sorted([*before, "lock"])
    gone = describe_running({**state, "vm_pid": 2**22 + 1})
    assert "its VM (pid 4194305) is gone: `gateway lab down` cleans up" in gone


def test_status_and_console_get_gw_wests_events_so_far(tmp_path: Path) -> None:
    lab = Lab(LabOptions(directory=tmp_path))
    (tmp_path / "gw-west.log").write_text(
        "2026-11-27T19:59:20.123 INFO event=daemon-started version=0.1.0\n"
        "some traceback line\n"
        "2026-11-27T19:59:21.001 WARNING event=child-failed connection=east reason=x y\n"
    )
    assert lab.recent_events() == [
        "19:59:20 daemon-started version=0.1.0",
        "19:59:21 child-failed connection=east reason=x y",
    ]
    assert lab.recent_events(limit=1) == ["19:59:21 child-failed connection=east reason=x y"]


def test_down_after_a_failed_agent_ends_the_vm_without_asking_it(tmp_path: Path) -> None:
    vm = subprocess.Popen(["sleep", "600"], start_new_session=True)  # stands in for vng
    try:
        lab = _vm_lab(tmp_path, port=9)  # nothing would answer there
        state = json.loads(lab.state_file.read_text())
        lab.state_file.write_text(json.dumps({**state, "vm_pid": vm.pid}))
        lab.shared.mkdir()
        (lab.shared / "up.json").write_text(json.dumps({"ok": False, "step": "tunnel"}))
        started = time.monotonic()
        assert lab.down() == [f"stopped the VM (process group {vm.pid})"]
        assert time.monotonic() - started < 10
        assert vm.wait(10) is not None
        assert not lab.opts.directory.exists()
    finally:
        vm.kill()
        vm.wait()
