"""FRR (zebra, bgpd, bfdd) in a test's namespace: the lab's runner (gateway/lab/frr.py).

`frr(ns, conf)` is the one way a test runs FRR: started in its namespace with `conf`
applied, every daemon ended by its pid and its directory removed when the block ends,
pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.lab.frr import Frr, FrrError
from gateway.netns import Netns

__all__ = ["Frr", "FrrError", "frr"]


@contextmanager
def frr(ns: Netns, conf: str | None = None, timeout: float = 20.0) -> Iterator[Frr]:
    """FRR in `ns` for the block, `conf` (an integrated frr.conf) applied; None: not
    started yet (the test starts it)."""
    instance = Frr(ns)
    try:
        if conf is not None:
            instance.start(conf, timeout=timeout)
        yield instance
    finally:
        instance.close()
