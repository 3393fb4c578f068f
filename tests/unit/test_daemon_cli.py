"""`gateway run` refuses a bad configuration before starting anything: every problem with
its key path and line, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli


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


def test_engine_level_config_errors_are_reported_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[connections.x]\nlocal = { auth = "psk", id = "CN=gw, O=x" }\n'
        'remote = { auth = "psk" }\npsk = "lab-secret-123456"\n'
    )
    assert cli.main(["run", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "distinguished names need certificates" in err and "Traceback" not in err
