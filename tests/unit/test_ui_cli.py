"""`gateway tui`: registered in the CLI, options parsed, bad options a one-line error."""

from __future__ import annotations

import pytest

from gateway import cli


def test_tui_subcommand_is_registered_with_its_options() -> None:
    args = cli.build_parser().parse_args(["tui", "--socket", "/run/x.sock", "--interval", "0.5"])
    assert (args.command, args.socket, args.interval) == ("tui", "/run/x.sock", 0.5)


def test_tui_socket_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CONTROL_SOCKET", "/tmp/elsewhere.sock")
    assert cli.build_parser().parse_args(["tui"]).socket == "/tmp/elsewhere.sock"


def test_tui_bad_interval_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tui", "--interval", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "gateway tui: --interval 0 is out of range (0.05 to 3600 s)\n"
