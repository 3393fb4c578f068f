"""What the engine shows of itself: counters for metrics and SA snapshots for list-sas.

Neither ever holds a secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from ike.events import Endpoint
from ike.ts import TrafficSelector


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics (never contain secrets)."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    malformed: int = 0
    integrity_failures: int = 0
    unknown_spi: int = 0
    unexpected: int = 0
    retransmits: int = 0
    duplicates_answered: int = 0
    keepalives: int = 0
    keepalives_sent: int = 0
    cookies_sent: int = 0
    handshakes: int = 0
    auth_failures: int = 0
    dead_peers: int = 0
    # MOBIKE (RFC 4555, ike/mobike.py)
    mobike_updates_sent: int = 0
    mobike_updates_received: int = 0
    mobike_migrations: int = 0
    mobike_malformed: int = 0
    cookie2_mismatches: int = 0
    dpd_probes: int = 0  # idle-time liveness checks sent (empty INFORMATIONAL)
    # IKEv2 redirect (RFC 5685, ike/redirect.py)
    redirects_sent: int = 0
    redirects_followed: int = 0
    redirects_ignored: int = 0  # bad nonce, unasked for, loop limit, FQDN gateway


@dataclass(frozen=True, slots=True)
class ChildSaInfo:
    name: str
    spi_in: int
    spi_out: int
    mode: str
    encap: bool
    proposal: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    installed_at: float


@dataclass(frozen=True, slots=True)
class IkeSaInfo:
    ike_sa: int
    connection: str | None
    state: str
    initiator: bool
    local: Endpoint
    remote: Endpoint
    local_id: str
    remote_id: str
    spi_i: bytes
    spi_r: bytes
    proposal: str | None
    established_at: float | None
    children: tuple[ChildSaInfo, ...]
    mobike: bool = False
    additional_addrs: tuple[str, ...] = ()
