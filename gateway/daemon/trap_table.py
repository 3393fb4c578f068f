"""Trap policies (`start_action = "trap"`): initiate a Child SA on the first packet.

Theory of operation
-------------------
A trapped Child has out policies for its configured selectors in the kernel and no
state (gateway/xfrm `install_trap`); a packet that matches makes the kernel send an
ACQUIRE carrying the trap's reqid and the packet's addresses (RFC 4301 §4.4; the kernel
holds a larval state per flow meanwhile, so one flow asks about every 30 s at most).
The daemon turns the first ACQUIRE into an initiation and ignores the rest until the
outcome is known. Per trapped Child (`TrapKey`: connection, child) one `Trap`:

    TRAPPED    --ACQUIRE-->                  CONNECTING (initiate once)
    CONNECTING --Child SA installed-->       INSTALLED
    CONNECTING --IKE/Child SA failed-->      BACKOFF (retry_at = now + backoff)
    BACKOFF    --ACQUIRE after retry_at-->   CONNECTING
    INSTALLED  --last Child SA of it gone--> TRAPPED   (the trap stays underneath)

ACQUIREs in CONNECTING, INSTALLED or BACKOFF before retry_at are coalesced (counted).
An initiation that has not ended either way after CONNECT_TIMEOUT (longer than the
engine's retransmissions take to give up) no longer holds ACQUIREs back.
The backoff doubles with each failure in a row (BACKOFF_FIRST .. BACKOFF_MAX) and
starts over once a Child SA got installed. `TrapTable` is pure (time is passed in): it
says what to do; the daemon does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.dataplane.base import TrapKey, TrapSpec

TRAPPED = "TRAPPED"
CONNECTING = "CONNECTING"
INSTALLED = "INSTALLED"
BACKOFF = "BACKOFF"

BACKOFF_FIRST = 2.0  # seconds after the first failure in a row
BACKOFF_MAX = 120.0
CONNECT_TIMEOUT = 180.0


@dataclass(slots=True)
class Trap:
    spec: TrapSpec
    reqid: int
    state: str = TRAPPED
    ike_sa: int | None = None  # the IKE SA bringing it up (CONNECTING)
    failures: int = 0  # in a row
    retry_at: float | None = None  # BACKOFF: ACQUIREs before this are coalesced
    connecting_since: float = 0.0
    acquires: int = 0
    coalesced: int = 0
    packet_ts: Any = None  # the ACQUIRE's (TSi, TSr) while waiting for an IKE SA

    def as_dict(self) -> dict[str, object]:
        """The control API's view (list-conns)."""
        return {
            "state": self.state,
            "reqid": f"{self.reqid:#010x}",
            "acquires": self.acquires,
            "coalesced": self.coalesced,
            "failures": self.failures,
            "retry_at": self.retry_at,
        }


class TrapTable:
    """The installed traps and their state machines (see the module docstring)."""

    def __init__(self) -> None:
        self._traps: dict[TrapKey, Trap] = {}
        self._by_reqid: dict[int, Trap] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._traps

    def __len__(self) -> int:
        return len(self._traps)

    def get(self, key: TrapKey) -> Trap | None:
        return self._traps.get(key)

    def by_reqid(self, reqid: int) -> Trap | None:
        return self._by_reqid.get(reqid)

    def all(self) -> list[Trap]:
        return list(self._traps.values())

    def add(self, spec: TrapSpec, reqid: int) -> Trap:
        trap = Trap(spec, reqid)
        self._traps[spec.key] = trap
        self._by_reqid[reqid] = trap
        return trap

    def remove(self, key: TrapKey) -> Trap | None:
        trap = self._traps.pop(key, None)
        if trap is not None:
            self._by_reqid.pop(trap.reqid, None)
        return trap

    def acquire(self, reqid: int, now: float) -> Trap | None:
        """An ACQUIRE for `reqid`: the trap to initiate now, or None (not a trap of ours,
        or coalesced with an initiation under way / an SA installed / a backoff)."""
        trap = self._by_reqid.get(reqid)
        if trap is None:
            return None
        trap.acquires += 1
        stuck = trap.state == CONNECTING and now - trap.connecting_since > CONNECT_TIMEOUT
        if (trap.state in (CONNECTING, INSTALLED) and not stuck) or (
            trap.state == BACKOFF and trap.retry_at is not None and now < trap.retry_at
        ):
            trap.coalesced += 1
            return None
        trap.state = CONNECTING
        trap.connecting_since = now
        trap.ike_sa = None
        trap.retry_at = None
        return trap

    def initiated(self, key: TrapKey, ike_sa: int) -> None:
        trap = self._traps.get(key)
        if trap is not None and trap.state == CONNECTING:
            trap.ike_sa = ike_sa

    def established(self, key: TrapKey) -> None:
        """A Child SA of this Child config is installed (from the trap or otherwise)."""
        trap = self._traps.get(key)
        if trap is not None:
            trap.state = INSTALLED
            trap.ike_sa = None
            trap.failures = 0
            trap.retry_at = None

    def failed(self, key: TrapKey, now: float) -> None:
        """The initiation failed (IKE or Child SA): back off before the next one."""
        trap = self._traps.get(key)
        if trap is None or trap.state != CONNECTING:
            return
        trap.failures += 1
        trap.state = BACKOFF
        trap.ike_sa = None
        trap.retry_at = now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (trap.failures - 1))

    def ike_sa_gone(self, ike_sa: int, now: float) -> None:
        """An IKE SA failed or was deleted: every initiation riding on it failed."""
        for trap in self._traps.values():
            if trap.state == CONNECTING and trap.ike_sa == ike_sa:
                self.failed(trap.spec.key, now)

    def down(self, key: TrapKey) -> None:
        """No Child SA of this Child config is left: back to the trap."""
        trap = self._traps.get(key)
        if trap is not None and trap.state == INSTALLED:
            trap.state = TRAPPED
