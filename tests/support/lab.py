"""Run `gateway lab ...` as a script would."""

from __future__ import annotations

import subprocess
import sys


def run_lab(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
