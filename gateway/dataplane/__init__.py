"""Data plane adapters: where the daemon puts Child SAs and how it drives the XDP programs.

    base.py   the Dataplane contract (Protocol, Installed, Counters, TrapSpec, DataplaneError)
    xfrm.py   `dataplane = "xfrm"`: the kernel through gateway/xfrm (the default)
    none.py   `dataplane = "none"`: nothing installed (benchmarks, hosts without ESP)
    xdp.py    `[gateway.xdp]`: the XDP/TC programs of bpf/ driven by engine events

`make_dataplane(kind)` builds the one the configuration names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.dataplane.base import Dataplane, DataplaneError
from gateway.dataplane.none import NoneDataplane
from gateway.dataplane.xfrm import XfrmDataplane

if TYPE_CHECKING:
    from gateway.xfrm.manager import OwnedRange


def make_dataplane(kind: str, *, owned: OwnedRange | None = None) -> Dataplane:
    if kind == "none":
        return NoneDataplane()
    if kind == "xfrm":
        return XfrmDataplane(owned=owned)
    raise DataplaneError(f"unknown data plane {kind!r}")
