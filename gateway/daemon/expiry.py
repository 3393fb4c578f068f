"""Kernel lifetimes: what the daemon does when the data plane reports that a byte,
packet or time limit of one of our Child SAs ran out (XFRM EXPIRE).

A soft limit (rekey_bytes / rekey_packets) rekeys the Child SA now (the engine ignores
a second request while one is under way); a hard limit means the kernel removed the
state, so the Child SA is deleted with the peer too.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from gateway.control.protocol import ControlError
from gateway.daemon.feature import Host
from gateway.daemon.report import Logged, spi

if TYPE_CHECKING:
    from gateway.daemon.records import ChildRecord, IkeRecord


class KernelExpiry:
    def __init__(self, daemon: Host) -> None:
        self.d = daemon

    def expired(self, spi_value: int, hard: bool) -> None:
        """A kernel lifetime (bytes/packets/life_time) ran out for one of our states."""
        for record, child in self.d.sas.children():
            if spi_value in (child.spi_in, child.spi_out):
                self._child_expired(record, child, spi_value, hard)
                return

    def _child_expired(
        self, record: IkeRecord, child: ChildRecord, spi_value: int, hard: bool
    ) -> None:
        self.d.report(
            "child-expired" if hard else "child-expiring",  # (the latter is published)
            connection=record.connection,
            child=child.name,
            spi=spi(spi_value),
            limit=Logged("hard" if hard else "soft"),
        )
        if not hard:
            rekey = getattr(self.d.engine, "rekey_child_sa", None)
            if rekey is not None and child.state == "INSTALLED":
                with contextlib.suppress(ControlError):
                    self.d.engine_call(rekey, record.ike_sa, child.spi_in)
                self.d.pump()
            return
        if child.state != "DELETING":
            child.state = "DELETING"
            with contextlib.suppress(ControlError):
                self.d.engine_call(self.d.engine.delete_child_sa, record.ike_sa, child.spi_in)
            self.d.pump()
