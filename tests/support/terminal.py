"""A real terminal for tests: a tmux server of our own (its own socket, ended by us).

`type()` sends a line as a person types it, `press()` single keys, `screen()` is what the
terminal shows now (`capture-pane`), `wait_for()` polls the screen until a pattern shows.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

_count = itertools.count()


class Terminal:
    def __init__(
        self,
        *,
        cwd: Path,
        env: Mapping[str, str],
        width: int = 160,
        height: int = 48,
    ) -> None:
        assert shutil.which("tmux"), "tmux missing: scripts/setup.sh installs it"
        self.socket = f"gwterm{os.getpid()}-{next(_count)}"
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}
        self.env.setdefault("TERM", "xterm-256color")
        # the server's socket on a local file system (in the kernel-layer VM: its tmpfs)
        self.env.setdefault("TMUX_TMPDIR", tempfile.gettempdir())
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", str(width),
            "-y", str(height), "-c", str(cwd), "bash --norc --noprofile",
        )  # fmt: skip
        self._tmux("set-option", "-g", "history-limit", "5000")

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def type(self, line: str) -> None:
        """Type `line` and press Enter."""
        self._tmux("send-keys", "-t", "main", "-l", line)
        self._tmux("send-keys", "-t", "main", "Enter")

    def press(self, *keys: str) -> None:
        """Keys by tmux name: "q", "Enter", "Escape", "C-c", ..."""
        self._tmux("send-keys", "-t", "main", *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "main")

    def scrollback(self) -> str:
        """Everything the terminal printed, also what scrolled off the screen."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "main")

    def wait_for(self, pattern: str, timeout: float, what: str = "") -> re.Match[str]:
        """Poll the screen until `pattern` (a regex) matches; the match is returned."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            found = re.search(pattern, screen)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the terminal did not show {what or pattern!r} within {timeout:.0f} s; "
                    f"it shows:\n{screen}\n--- scrollback ---\n{self.scrollback()[-6000:]}"
                )
            time.sleep(0.5)

    def close(self) -> None:
        """End our tmux server (only ours: its own socket) and what runs in it."""
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"],
            capture_output=True,
            timeout=30,
            env=self.env,
        )

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
