"""Log set-up of `gateway run` (the daemon, the supervisor and each worker).

One line per event on stderr, `TIME LEVEL event=NAME key=value ...` (docs/daemon.md,
"Logs"); a worker's lines end with ` worker=K`.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, suffix: str = "") -> None:
    """Send the `gateway` loggers to stderr at `level` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(message)s" + suffix, "%Y-%m-%dT%H:%M:%S"
        )
    )
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
