"""The data plane's contract: what the daemon asks of wherever Child SAs are installed.

`Dataplane` is the Protocol the daemon talks to (implementations: `xfrm.XfrmDataplane`,
the kernel; `none.NoneDataplane`, nothing installed); `Installed` is a Child SA as a data
plane holds it, `Counters` its traffic, `TrapSpec` the trap policies of a Child config,
and `DataplaneError` the one error a data plane raises (a GatewayError: its message is
for the user). Keys reach the data plane inside `ChildSaEstablished` and go no further
than the kernel message; nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection
    from ike.events import ChildSaEstablished

ExpireHandler = Callable[[int, bool], None]  # (SPI of the expired state, hard?)
# (reqid of the trap, the packet's source and destination address or None)
AcquireHandler = Callable[[int, str | None, str | None], None]
TrapKey = tuple[str, str]  # (connection, child)


@dataclass(frozen=True, slots=True)
class TrapSpec:
    """What the data plane needs to install a trap: outer addresses (the tunnel
    template), the configured selectors (CIDR strings) and the mode."""

    connection: str
    child: str
    local: str
    remote: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    mode: str
    if_id_in: int | None = None  # route-based: the Child's if_ids (the trap's out
    if_id_out: int | None = None  # policies carry if_id_out: traffic routed into it)

    @property
    def key(self) -> TrapKey:
        return (self.connection, self.child)


class DataplaneError(GatewayError):
    """Installing or removing an SA failed; the message names the operation. `errno` is
    the kernel's error number where the kernel refused (EEXIST: an SA or policy with the
    same key is installed already), None otherwise."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class Counters(NamedTuple):
    """Traffic and error counters of one SA, a Child SA or a (connection, child); the
    errors are the inbound states' drops (`ip -s xfrm state`: replay-window, replay,
    failed). A tuple: a scrape of 100,000 Child SAs makes several per Child."""

    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0
    replay_errors: int = 0  # replayed (already seen) packets dropped
    replay_window_errors: int = 0  # packets too old for the replay window dropped
    integrity_failures: int = 0  # packets whose ICV check failed dropped

    def plus(self, o: Counters) -> Counters:
        """Field by field sum (`+` stays the tuple's concatenation)."""
        return Counters(
            self[0] + o[0],
            self[1] + o[1],
            self[2] + o[2],
            self[3] + o[3],
            self[4] + o[4],
            self[5] + o[5],
            self[6] + o[6],
        )

    def beyond(self, o: Counters) -> Counters:
        """What `self` counted beyond `o` (never below 0 per field)."""
        return Counters(*(max(0, a - b) for a, b in zip(self, o, strict=True)))

    def traffic(self) -> Counters:
        """Only the traffic fields (errors 0)."""
        return Counters(self[0], self[1], self[2], self[3])

    def errors(self) -> Counters:
        """Only the error fields (traffic 0)."""
        return Counters(0, 0, 0, 0, self[4], self[5], self[6])

    def as_dict(self) -> dict[str, int]:
        return self._asdict()


ZERO: Final = Counters()


@dataclass(slots=True)
class Installed:
    """A Child SA as the data plane holds it. `handle` is the implementation's own.
    `offload` is what the kernel really does (read back), `offload_dev` the device it
    was asked on and `offload_reason` why it got less than asked ("" when it did not)."""

    spi_in: int
    spi_out: int
    offload: str = "none"  # "none" | "crypto" | "packet"
    handle: Any = field(default=None, repr=False)
    offload_dev: str | None = None
    offload_reason: str = ""


class Dataplane(Protocol):
    """Where the daemon puts the Child SAs the IKE engine negotiated."""

    name: str

    def start(self) -> None:
        """Prepare (e.g. remove our leftovers of a crashed run)."""

    def install(self, child: ChildSaEstablished, config: ChildSection | None) -> Installed: ...

    def install_many(
        self, children: Sequence[tuple[ChildSaEstablished, ChildSection | None]]
    ) -> list[Installed | DataplaneError]:
        """Install many Child SAs at once (one batched send where the data plane can),
        each all or nothing as with install(): one result per child, in order, either
        what is installed or the error that left nothing of that child behind."""

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildSection | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        """Rekey, make-before-break: the new SAs, the policies moved to them, the old
        outbound SA removed; the old inbound one too unless `keep_old_inbound` (then
        `retire(old)` removes it later). `switch_outbound=False` (the rekey responder):
        only the new inbound SA, `old` keeps sending until `switch_outbound()`."""

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        """Send on `new` (from replace(switch_outbound=False)) instead of `old`: its
        outbound SA in, the policies moved to it, the outbound SA of `old` removed."""

    def retire(self, old: Installed) -> None:
        """Remove the old inbound SA that replace(keep_old_inbound=True) kept."""

    def migrate(
        self, installed: Installed, local: str, remote: str, encap: tuple[int, int] | None
    ) -> Installed:
        """MOBIKE (RFC 4555): the same SAs (SPIs, keys, sequence numbers, counters) at new
        outer addresses and encapsulation (`encap` = (local port, remote port) or None);
        the policies follow. On failure the SAs stay as they were."""

    def remove(self, installed: Installed) -> None: ...

    def counters(
        self, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        """Read now (for an SA about to go): its inbound and/or outbound state."""

    def read_counters(self) -> Any:
        """Every SA's counters in ONE read (XFRM: one GETSA dump): a table for
        counters_in(). Safe to call from another thread (the daemon runs it off its event
        loop), one call at a time; nothing else here is."""

    def counters_in(
        self, table: Any, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        """An SA's counters looked up in a read_counters() table (missing: 0)."""

    def errors(self) -> dict[str, int]:
        """Kernel error counters (xfrm_stat), empty when there is no kernel data plane."""

    def install_trap(self, trap: TrapSpec) -> int:
        """Trap policies for a Child config (out policies, no state): matching traffic
        raises an ACQUIRE. Returns the trap's reqid; Child SAs of that Child config are
        then installed under it and share its out policies (it stays underneath)."""

    def remove_trap(self, key: TrapKey) -> None: ...

    def watch(self, on_expire: ExpireHandler, on_acquire: AcquireHandler | None = None) -> None:
        """Report kernel lifetime expiries of our SAs, on_expire(spi, hard), and ACQUIREs
        of our traps, on_acquire(reqid, src, dst). From the running event loop; a data
        plane without a kernel never calls them."""

    def close(self) -> None:
        """Release resources; SAs must have been removed by the daemon before."""
