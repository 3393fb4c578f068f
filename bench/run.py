"""Run every bench/bench_*.py in turn; each prints its own numbers.

Benchmarks measure, they do not assert: results are recorded in docs/benchmarks/.
`python bench/run.py NAME...` runs only the named ones (e.g. `ike` for bench_ike*.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(s.stem.startswith(f"bench_{a}") for a in argv)]
    if not scripts:
        print("no benchmarks selected")
        return 0
    failed = []
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(
            f"== {script.stem}: exit {rc}, {time.monotonic() - start:.1f} s wall ==\n", flush=True
        )
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
