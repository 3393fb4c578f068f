"""`gateway run` refuses a bad configuration before starting anything: every problem with
its key path and line, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import entry as cli


def test_run_with_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "gw.toml"
    bad.write_text('[gateway]\ndataplane = "dpdk"\n[connections.x]\nlocal_addrs = "nope"\n')
    assert cli.main(["run", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway run: ")
    assert f"{bad}:2: gateway.dataplane" in err and f"{bad}:4: connections.x.local_addrs" in err
    assert "Traceback" not in err


def test_run_with_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "-c", str(tmp_path / "none.toml")]) == 2
    assert "cannot read: No such file or directory" in capsys.readouterr().err


def test_engine_level_config_errors_are_reported_too(tmp_path: Path) -> None:
    # A subprocess with a deadline, on loopback with an ephemeral port: should the engine
    # ever accept this config, the test fails instead of leaving a daemon running.
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[gateway]\nlisten = ["127.0.0.1"]\nport = 0\nport_nat_t = 0\nmetrics_listen = "off"\n'
        f'control_socket = "{tmp_path}/c.sock"\n'
        '[connections.x]\nlocal = { auth = "psk", id = "@#not-hex" }\n'
        'remote = { auth = "psk" }\npsk = "lab-secret-123456"\n'
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("gateway run accepted a config the engine cannot run")
    assert proc.returncode == 2, proc.stderr
    assert "key ID is not hex" in proc.stderr and "Traceback" not in proc.stderr
