"""Run the kernel test layer inside a VM when the host kernel has no ESP.

Theory of operation. The host pytest session collects every test, tests/kernel included.
If the session selects kernel-layer tests and the running kernel cannot install an ESP
state (probed once in a throw-away namespace), this plugin takes over those items: at the
first one it boots ONE virtme-ng VM (gateway.lab.vm) that runs pytest on exactly those node
ids from the same checkout and venv, with this plugin in "report" mode writing every test
report as a JSON line into a shared folder. Back on the host each kernel item's reports
are replayed into the host session, so one pytest summary covers all layers and a failure
inside the VM fails the host run. An item the VM never reported (VM crash, timeout,
collection error) is reported as failed with the VM's console tail.

GATEWAY_KERNEL_LAYER=auto (default) | host (run here) | vm (always delegate).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport

from gateway import probe
from gateway.lab.vm import run_in_vm

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = ROOT / "tests" / "kernel"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--vm-report",
        default=None,
        help="(internal) write test reports as JSON lines to this file",
    )


def _is_kernel_item(item: pytest.Item) -> bool:
    try:
        Path(str(item.path)).resolve().relative_to(KERNEL_DIR)
    except ValueError:
        return False
    return True


class ReportWriter:
    """Guest side: serialise every report for the host to replay."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at unconfigure

    def _write(self, report: Any) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.file.write(json.dumps(data) + "\n")
        self.file.flush()

    def pytest_runtest_logreport(self, report: TestReport) -> None:
        self._write(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write(report)

    def close(self) -> None:
        self.file.close()


class VmDelegate:
    """Host side: run the selected kernel items in one VM and replay their reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.items: list[pytest.Item] = []
        self.reports: dict[str, list[TestReport]] | None = None
        self.failure: str = ""

    def _run_vm(self) -> None:
        self.reports = {}
        workdir = Path(tempfile.mkdtemp(prefix="gw-kernel-layer-"))
        ids = workdir / "nodeids.txt"
        ids.write_text("\n".join(i.nodeid for i in self.items) + "\n")
        report = workdir / "reports.jsonl"
        py = Path(sys.executable)
        # Temporary files stay in the guest (/run is its tmpfs): on the shared 9p folder
        # an unlinked open file cannot be truncated (ENOENT), which breaks pytest's output
        # capture as soon as a test writes to stdout/stderr, and iperf3. tmp_path stays
        # on the shared folder (--basetemp) so a failed test's files can be read here.
        cmd = (
            f"cd {shlex.quote(str(ROOT))} && mkdir -p /run/gw-kernel-tmp && "
            "export PYTHONDONTWRITEBYTECODE=1 GATEWAY_KERNEL_LAYER=host "
            "GATEWAY_VM_GUEST=1 TMPDIR=/run/gw-kernel-tmp && "
            f"{shlex.quote(str(py))} -m pytest -p no:cacheprovider -q "
            f"--basetemp {shlex.quote(str(workdir / 'tmp'))} "
            f"--vm-report {shlex.quote(str(report))} @{shlex.quote(str(ids))} "
            f"> {shlex.quote(str(workdir / 'pytest.out'))} 2>&1"
        )
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"kernel layer: host kernel has no ESP; running {len(self.items)} "
                "test(s) in a virtme-ng VM (one boot)",
                bold=True,
            )
        timeout = float(os.environ.get("GATEWAY_VM_TIMEOUT", "4500"))
        started = time.monotonic()
        # A SIGTERM to this session must not leave the VM running: turn it into an
        # exception, on which run_in_vm ends the VM's whole process group.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            result = run_in_vm(cmd, rwdirs=[workdir], timeout=timeout)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if tr is not None:
            tr.write_line(
                f"kernel layer: VM run took {time.monotonic() - started:.1f} s wall "
                f"(exit {result.returncode})"
            )
        if report.exists():
            for line in report.read_text(encoding="utf-8").splitlines():
                rep = self.config.hook.pytest_report_from_serializable(
                    config=self.config, data=json.loads(line)
                )
                if isinstance(rep, TestReport):
                    if isinstance(rep.longrepr, list):  # a skip's (path, line, reason)
                        rep.longrepr = tuple(rep.longrepr)  # type: ignore[assignment]
                    self.reports.setdefault(rep.nodeid, []).append(rep)
        out = workdir / "pytest.out"
        guest_out = out.read_text(errors="replace") if out.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)  # everything needed is read above
        self.failure = (
            f"VM exit status {result.returncode}"
            + (" (timed out)" if result.timed_out else "")
            + f"\n--- guest pytest output (tail) ---\n{guest_out[-6000:]}"
            + f"\n--- VM console (tail) ---\n{result.console[-4000:]}"
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        if not _is_kernel_item(item):
            return None
        if self.reports is None:
            self._run_vm()
        assert self.reports is not None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = self.reports.get(item.nodeid)
        if not reports:
            reports = [
                TestReport(
                    item.nodeid,
                    item.location,
                    {},
                    "failed",
                    f"kernel test did not report back from the VM.\n{self.failure}",
                    "call",
                )
            ]
        for rep in reports:
            item.ihook.pytest_runtest_logreport(report=rep)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _delegate_needed() -> bool:
    mode = os.environ.get("GATEWAY_KERNEL_LAYER", "auto")
    if mode == "host":
        return False
    if mode == "vm":
        return True
    return not probe.kernel_esp().ok


class _LazyDelegate:
    """Decides host-or-VM only when kernel items were actually collected."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if not any(_is_kernel_item(i) for i in items):
            return
        if os.geteuid() != 0 or not _delegate_needed():
            return
        delegate = VmDelegate(self.config)
        delegate.items = [i for i in items if _is_kernel_item(i)]
        self.config.pluginmanager.register(delegate, "gateway-vm-delegate")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--vm-report")
    if path:
        writer = ReportWriter(config, path)
        config.pluginmanager.register(writer, "gateway-vm-report")
        config.add_cleanup(writer.close)
    elif not os.environ.get("GATEWAY_VM_GUEST"):
        config.pluginmanager.register(_LazyDelegate(config), "gateway-vm-lazy")
