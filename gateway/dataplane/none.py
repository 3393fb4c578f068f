"""`dataplane = "none"`: control plane only, nothing installed.

SAs are negotiated and recorded (they appear in list-sas as INSTALLED with offload
"none" and zero counters) but nothing reaches a kernel, like strongSwan's load-tester
plugin faking its kernel interface. For benchmarking the IKE side and for hosts without
kernel ESP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.dataplane.base import (
    AcquireHandler,
    Counters,
    DataplaneError,
    ExpireHandler,
    Installed,
    TrapKey,
    TrapSpec,
)

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection
    from ike.events import ChildSaEstablished


class NoneDataplane:
    """Records SAs and installs nothing (strongSwan load-tester style)."""

    name = "none"

    def __init__(self) -> None:
        self.installed: dict[int, Installed] = {}  # by inbound SPI
        # MOBIKE moves, recorded: (spi_in, local, remote, encap) (nothing to move here)
        self.migrations: list[tuple[int, str, str, tuple[int, int] | None]] = []

    def start(self) -> None:
        pass

    def install(self, child: ChildSaEstablished, config: ChildSection | None) -> Installed:
        sa = Installed(child.spi_in, child.spi_out)
        self.installed[child.spi_in] = sa
        return sa

    def install_many(
        self, children: Sequence[tuple[ChildSaEstablished, ChildSection | None]]
    ) -> list[Installed | DataplaneError]:
        return [self.install(child, config) for child, config in children]

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildSection | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        if not keep_old_inbound:
            self.installed.pop(old.spi_in, None)
        return self.install(child, config)

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        return new

    def retire(self, old: Installed) -> None:
        self.installed.pop(old.spi_in, None)

    def migrate(
        self, installed: Installed, local: str, remote: str, encap: tuple[int, int] | None
    ) -> Installed:
        self.migrations.append((installed.spi_in, local, remote, encap))
        return installed

    def remove(self, installed: Installed) -> None:
        self.installed.pop(installed.spi_in, None)

    def counters(
        self, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        return Counters()

    def read_counters(self) -> Any:
        return {}

    def counters_in(
        self, table: Any, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        return Counters()

    def errors(self) -> dict[str, int]:
        return {}

    def install_trap(self, trap: TrapSpec) -> int:
        raise DataplaneError("trap policies need the kernel: dataplane 'none' has none")

    def remove_trap(self, key: TrapKey) -> None:
        pass

    def watch(self, on_expire: ExpireHandler, on_acquire: AcquireHandler | None = None) -> None:
        pass

    def close(self) -> None:
        self.installed.clear()
