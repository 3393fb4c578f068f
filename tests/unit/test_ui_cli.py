"""`gateway tui`: registered in the CLI, options parsed, bad options a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from gateway.tui import socket_path


def test_tui_subcommand_is_registered_with_its_options() -> None:
    args = cli.build_parser().parse_args(["tui", "--socket", "/run/x.sock", "--interval", "0.5"])
    assert (args.command, args.interval) == ("tui", 0.5)
    assert socket_path(args) == "/run/x.sock"


def test_tui_socket_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CONTROL_SOCKET", "/tmp/elsewhere.sock")
    assert socket_path(cli.build_parser().parse_args(["tui"])) == "/tmp/elsewhere.sock"
    monkeypatch.delenv("GATEWAY_CONTROL_SOCKET")
    assert socket_path(cli.build_parser().parse_args(["tui"])) == "/run/gateway/control.sock"


def test_tui_takes_the_socket_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\ncontrol_socket = "/run/gw-test/ctl.sock"\n')
    args = cli.build_parser().parse_args(["tui", "-c", str(config)])
    assert socket_path(args) == "/run/gw-test/ctl.sock"


def test_tui_bad_interval_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tui", "--interval", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "gateway tui: --interval 0 is out of range (0.05 to 3600 s)\n"


def test_tui_unreadable_config_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tui", "-c", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err  # the config's own error report, no traceback
    assert err.startswith("gateway tui: ") and "cannot read" in err and "Traceback" not in err
