"""Lifetimes of IKE and Child SAs (RFC 7296 §2.8), keepalive and DPD deadlines, jitter.

strongSwan's meaning: an SA is rekeyed at `rekey_time` minus a random 0..`rand_time`
(from the injected source, so SAs made in the same second spread over the window) and
ends at its hard lifetime (Child: `life_time`; IKE: `rekey_time + over_time`); 0 turns a
timer off. NAT-T keepalives (RFC 3948) and Dead Peer Detection (§2.4: idle time since
the last valid message or ESP packet from the peer, looked at lazily) are deadlines of
the same kind. All of an SA's deadlines, and its Child SAs', fold into one (`life_at`)
so that every SA has one entry in the engine's timer heap; what is due is acted upon by
the engine. IKE reauthentication (§2.8.3) would be one more deadline here.
"""

from __future__ import annotations

from ike.config import EngineSettings
from ike.crypto import RandomSource
from ike.hooks import InboundTraffic
from ike.sa import ChildRekey, ChildSa, ChildState, IkeSa


def jittered(random: RandomSource, base: float, rand: float) -> float:
    """`base` minus a random 0..rand: thousands of SAs set up in the same second must not
    all rekey in the same second."""
    if rand <= 0:
        return base
    return base - rand * int.from_bytes(random(2), "big") / 65536


def retry_delay(random: RandomSource) -> float:
    """After TEMPORARY_FAILURE (§2.25): try again in 10..20 s."""
    return 20.0 - jittered(random, 10.0, 10.0)


def start_ike(sa: IkeSa, settings: EngineSettings, random: RandomSource, now: float) -> None:
    """An IKE SA was established or rekeyed at `now`: its rekey, hard end, keepalive
    and DPD deadlines."""
    assert sa.conn is not None
    c = sa.conn.config
    if c.rekey_time:
        sa.rekey_at = now + jittered(random, c.rekey_time, c.rand_time)
        sa.hard_at = now + c.rekey_time + c.over_time
    else:
        sa.rekey_at = sa.hard_at = None
    interval = settings.keepalive_interval
    sa.keepalive_at = now + interval if sa.behind_nat and interval > 0 else None
    sa.last_inbound = now
    sa.dpd_at = now + c.dpd_delay if c.dpd_delay > 0 else None


def start_child(child: ChildSa, random: RandomSource, now: float) -> None:
    """A Child SA was installed at `now`: its rekey and hard lifetime."""
    c = child.config.config
    if c.rekey_time:
        child.rekey_at = now + jittered(random, c.rekey_time, c.rand_time)
    child.expire_at = now + c.life_time if c.life_time else None


def earliest(sa: IkeSa) -> float | None:
    """The earliest lifetime deadline of the SA and its current Child SAs (`life_at`)."""
    at = sa.rekey_at
    if sa.hard_at is not None and (at is None or sa.hard_at < at):
        at = sa.hard_at
    for t, _ in sa.child_retries:
        if at is None or t < at:
            at = t
    if sa.keepalive_at is not None and (at is None or sa.keepalive_at < at):
        at = sa.keepalive_at
    if sa.dpd_at is not None and (at is None or sa.dpd_at < at):
        at = sa.dpd_at
    for c in sa.children.values():
        if c.switch_at is not None and (at is None or c.switch_at < at):
            at = c.switch_at
        if c.rekey is ChildRekey.REKEYED or c.state is ChildState.DELETING:  # c.closing, inlined
            continue
        for due in (c.rekey_at, c.expire_at):
            if due is not None and (at is None or due < at):
                at = due
    return at


def dpd_check_due(sa: IkeSa, traffic: InboundTraffic | None, now: float) -> bool:
    """Dead Peer Detection (strongSwan's idle-time DPD) when `dpd_at` passed: True when
    nothing came from the peer for `dpd_delay`, neither an IKE message nor ESP on its
    Child SAs (asked of InboundTraffic only now, so traffic costs nothing per packet).
    Sets the next `dpd_at` either way."""
    assert sa.conn is not None
    delay = sa.conn.config.dpd_delay
    if traffic is not None and sa.children:
        seen = sum(traffic.packets_in(sa.uid, spi) for spi in sa.children)
        if seen != sa.esp_seen:
            sa.esp_seen = seen
            sa.last_inbound = now
    if sa.last_inbound + delay > now:
        sa.dpd_at = sa.last_inbound + delay
        return False
    sa.dpd_at = now + delay
    return True
