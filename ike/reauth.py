"""IKE SA reauthentication (RFC 7296 §2.8.3; strongSwan's reauth_time), make-before-break.

Theory of operation
-------------------
Rekeying (ike/ike_rekey.py) renews keys; reauthentication proves the peers again (an EAP
user's password, a certificate that may have been revoked meanwhile), which IKEv2 can do
only with a new IKE SA from IKE_SA_INIT on. Make-before-break:

1. At `reauth_at` (reauth_time minus a random 0..rand_time, or earlier when the
   responder announced a shorter AUTH_LIFETIME, RFC 4478) the initiator starts a new IKE
   SA to the same peer with the first Child config of the old one; it names the old SA
   its `predecessor` (the old one names it its `successor`). Asking for a virtual IP, it
   asks for the one it holds.
2. Each Child SA of the new IKE SA that matches one of the old SA (same Child config and
   selectors) takes it over (`take_over_child`): ChildSaEstablished carries `replaces`,
   so the caller installs it in the old one's place like a rekey, and the old Child SA
   no longer rekeys. Once the new SA is established, the old one's other Child SAs are
   created on it (CREATE_CHILD_SA).
3. When the new SA has no request under way any more (`progress`), the initiator deletes
   the old IKE SA (IkeSaDeleted "reauthenticated"), and with it the old Child SAs.

The responder does not know a reauthentication from a second connection of the same
peer: when an SA of the same connection and peer identities is established while another
is live (`ExchangeHost.same_peer`), Child SAs with the same config and selectors are
taken over the same way; the responder keeps sending on the old SA until the initiator
deletes it (ChildSaOutboundSwitched "old SA deleted", or "timeout" after the initiator's
retransmission span), as the responder of a Child SA rekey does (§2.8). A responder with
reauth_time announces it (AUTH_LIFETIME) and deletes an SA whose peer did not
reauthenticate by reauth_time + over_time.

A new SA that fails leaves the old one as it is; the initiator tries again 10-20 s later.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ike import lifetimes, window
from ike.codec import Notify, Payload
from ike.config import CompiledConnection
from ike.constants import NotifyType
from ike.host import ExchangeHost
from ike.payloads import first_notify
from ike.sa import ChildRekey, ChildSa, IkeSa, RekeyState, State


def schedule(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """An IKE SA was established at `now`: when the initiator reauthenticates it (the
    earlier of its reauth_time and the responder's AUTH_LIFETIME, already in
    `reauth_at`), or when the responder gives up waiting for that."""
    assert sa.conn is not None
    c = sa.conn.config
    if not sa.initiator:
        sa.reauth_at = now + c.reauth_time + c.over_time if c.reauth_time else None
        return
    if c.reauth_time:
        # the jitter of rekeys; a rand_time not shorter than reauth_time (its default is
        # derived from rekey_time) spreads over a tenth of it instead
        spread = c.rand_time if c.rand_time < c.reauth_time else c.reauth_time * 0.1
        at = now + lifetimes.jittered(host.random, c.reauth_time, spread)
        sa.reauth_at = at if sa.reauth_at is None else min(at, sa.reauth_at)


def responder_payloads(conn: CompiledConnection) -> list[Payload]:
    """AUTH_LIFETIME (RFC 4478 §2): the seconds until the initiator must reauthenticate."""
    seconds = int(conn.config.reauth_time)
    if seconds <= 0:
        return []
    return [Notify(NotifyType.AUTH_LIFETIME, struct.pack("!I", min(seconds, 0xFFFFFFFF)))]


def on_auth_lifetime(
    host: ExchangeHost, sa: IkeSa, payloads: Sequence[Payload], now: float
) -> None:
    """The responder's AUTH_LIFETIME (initiator): reauthenticate a little before it."""
    n = first_notify(payloads, NotifyType.AUTH_LIFETIME)
    if n is None or len(n.data) != 4:
        return
    assert sa.conn is not None
    lifetime = float(struct.unpack("!I", n.data)[0])
    spread = min(sa.conn.config.rand_time, lifetime / 10)
    sa.reauth_at = now + lifetimes.jittered(host.random, lifetime, spread)


def due(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """`reauth_at` passed: the initiator reauthenticates; the responder deletes the SA
    its peer did not reauthenticate in time."""
    sa.reauth_at = None
    if not sa.live or sa.successor is not None:
        return
    if not sa.initiator:
        host.send_ike_delete(sa, now)
        return
    if sa.rekey is not RekeyState.IDLE or sa.outstanding is not None:
        sa.reauth_at = now + 1.0  # after the exchange under way
        return
    assert sa.conn is not None
    children = [c for c in sa.children.values() if not c.closing]
    if children:
        first = children[0].config
    elif sa.conn.children:
        first = sa.conn.children[0]
    else:
        return
    host.stats.reauths_started += 1
    host.start_initiator(sa.conn, first, sa.local, sa.remote, now, predecessor=sa)


def take_over_child(
    host: ExchangeHost, sa: IkeSa, child: ChildSa, initiator: bool, now: float
) -> tuple[int, int] | None:
    """A Child SA of `sa` was made: the matching Child SA of its predecessor, which it
    replaces, as (handle, inbound SPI); the old one stops rekeying. `initiator`: we made
    it (then we send on it at once); else we keep sending on the old one until it goes."""
    old = sa.predecessor
    if old is None or not old.live:
        return None
    for c in old.children.values():
        if (
            not c.closing
            and c.config.name == child.config.name
            and c.local_ts == child.local_ts
            and c.remote_ts == child.remote_ts
            and c.transport == child.transport
        ):
            c.rekey_to(ChildRekey.REKEYED)
            old.successor = sa
            if not initiator:
                child.outbound_from = c
                child.switch_at = now + window.retransmission_span(host.settings)
            host.lifetimes_changed(old)
            return (old.uid, c.spi_in)
    return None


def responder_settled(sa: IkeSa) -> None:
    """After the responder's last IKE_AUTH answer: an SA of the same peer that none of
    the new Child SAs took over stays on its own (a second device, not a reauth)."""
    old = sa.predecessor
    if old is not None and old.successor is not sa:
        sa.predecessor = None


def leftover_children(sa: IkeSa) -> list[ChildSa]:
    """The new SA is established (initiator): the predecessor's Child SAs it did not take
    over in IKE_AUTH, to create on it now."""
    old = sa.predecessor
    if old is None or not old.live:
        return []
    return [c for c in old.children.values() if not c.closing]


def progress(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """An answer came on the new SA (initiator): once nothing is under way on it any
    more, the old SA goes (Delete, IkeSaDeleted "reauthenticated")."""
    old = sa.predecessor
    if old is None or not sa.initiator or sa.state is not State.ESTABLISHED:
        return
    if sa.outstanding is not None or sa.queue or sa.child_requests:
        return
    sa.predecessor = None
    old.successor = sa
    if old.state is State.ESTABLISHED:
        host.stats.reauths_done += 1
        host.send_ike_delete(old, now)


def failed(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """The new SA ended before it took over: the old one stays, and the initiator tries
    again in 10-20 s (before its hard lifetime, if it has one)."""
    old = sa.predecessor
    sa.predecessor = None
    if old is None or old.successor not in (None, sa):
        return
    old.successor = None
    if old.live and old.initiator:
        old.reauth_at = now + lifetimes.retry_delay(host.random)
        host.lifetimes_changed(old)


def switching(sa: IkeSa) -> list[tuple[IkeSa, ChildSa]]:
    """The old SA `sa` ends: the Child SAs of its successor still sending on one of its
    Child SAs (they switch now, before the old ones' ChildSaDeleted)."""
    new = sa.successor
    if new is None:
        return []
    mine = set(map(id, sa.children.values()))
    return [(new, c) for c in new.children.values() if id(c.outbound_from) in mine]
