"""`gateway tui`: registered in the CLI, options parsed, bad options a one-line error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import entry as cli
from gateway.cli.tui import socket_path


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


def test_gateway_tui_in_a_terminal_shows_disconnected_and_quits(tmp_path: Path) -> None:
    """The real command on a pseudo-terminal: no daemon at the socket, so the console
    says DISCONNECTED (instead of failing); `q` ends it with status 0."""
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import sys
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.environ["TERM"] = "xterm-256color"
        sock = str(tmp_path / "no-daemon.sock")
        os.execv(sys.executable, [sys.executable, "-m", "gateway", "tui", "--socket", sock])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))

    def read_until(done: Callable[[bytes], bool], timeout: float) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while not done(out) and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
        return out

    status: int | None = None
    try:
        screen = read_until(lambda out: b"DISCONNECTED" in out, 60)
        assert b"DISCONNECTED" in screen and b"Traceback" not in screen
        os.write(fd, b"q")
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline:
            read_until(lambda out: False, 0.2)
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
        assert status == 0
    finally:
        if status is None:  # still running (or not yet reaped): end it, by its pid
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
