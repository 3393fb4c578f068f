"""The `gateway` command frame and `gateway doctor`'s pure parts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from gateway import __version__, probe
from gateway.cli import entry as cli
from gateway.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {__version__}"


def test_python_dash_m_runs_the_same_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "doctor" in proc.stdout


def test_unknown_subcommand_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_aes_checks_follow_cpu_flags() -> None:
    with_ni = {c.name: c for c in probe.aes_instructions({"aes", "pclmulqdq"})}
    assert with_ni["aes-ni"].status == "ok"
    assert with_ni["vaes"].status == "info"
    without = {c.name: c for c in probe.aes_instructions({"sse2"})}
    assert without["aes-ni"].status == "missing"
    assert "chacha20poly1305" in without["aes-ni"].fix
    wide = {c.name: c for c in probe.aes_instructions({"aes", "pclmulqdq", "vaes", "vpclmulqdq"})}
    assert wide["vaes"].status == "ok"


def test_doctor_json_lists_every_check_with_a_fix_for_gaps(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        probe, "kernel_esp", lambda: probe.Check("kernel-esp", "missing", "no ESP", "boot X")
    )
    monkeypatch.setattr(probe, "cpu_flags", lambda: {"aes", "pclmulqdq"})
    rc = main(["doctor", "--no-compile", "--json"])
    checks = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in checks]
    assert names[:3] == ["kernel-esp", "aes-ni", "vaes"]
    assert "bcc" in names
    assert rc == 1  # a missing required capability is an error status
    for c in checks:
        assert set(c) == {"name", "status", "detail", "fix"}
        if c["status"] == "missing":
            assert c["fix"]


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_every_command_is_registered_by_its_module() -> None:
    for name in cli.COMMANDS:
        assert _commands(cli.build_parser(name)) == [name]
    assert _commands(cli.build_parser()) == list(cli.COMMANDS)


def test_ctl_loads_neither_the_engine_nor_the_daemon() -> None:
    """`gateway ctl` runs many times a second in scripts: it imports only what it uses."""
    probe_code = (
        "import sys\n"
        "from gateway.cli import main\n"
        "rc = main(['ctl', '--socket', '/nonexistent/control.sock', 'stats'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ike', 'cryptography', 'pyroute2', 'textual', 'prometheus_client', 'bcc') "
        "or m in ('gateway.config', 'gateway.daemon'))\n"
        "print(rc, heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe_code], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "2 []", proc.stdout  # a clear error, nothing heavy loaded
    assert "cannot connect to control socket" in proc.stderr
    assert "Traceback" not in proc.stderr
