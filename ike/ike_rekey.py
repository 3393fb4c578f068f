"""IKE SA rekey (RFC 7296 §1.3.2, §2.18) and simultaneous rekeys (§2.8.2), both roles.

Theory of operation
-------------------
A rekey makes a new IKE SA with new SPIs: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni |
Nr) under the old SA's PRF; the rekey initiator becomes the new SA's original initiator
and message IDs start at 0. The new SA is PENDING until it takes over the old one's
handle (``take_over``): the Child SAs, the queued requests and the pending retries move,
IkeSaRekeyed is reported, and the old SA is REKEYED: it goes without events, deleted by
the rekey initiator (or it lingers SUPERSEDED_LINGER, answering the peer, then goes).

Our rekey is REKEYING while its request is out. A peer's rekey that arrives meanwhile
is answered (COLLIDING) and settled when our answer comes: the exchange holding the
lowest of the four nonces made the redundant SA (REDUNDANT), which its initiator
deletes; the other exchange's initiator deletes the old SA. A rekey answered with an
error is retried 10-20 s later until the hard lifetime; INVALID_KE_PAYLOAD once with the
group the peer names. While another exchange of ours is under way, the peer's rekey is
answered TEMPORARY_FAILURE (§2.25).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from ike import lifetimes
from ike.codec import KeyExchange, Message, Nonce, Payload, SecurityAssociation
from ike.constants import ExchangeType, NotifyType
from ike.crypto import DH_GROUPS, DhPrivate
from ike.errors import ProtocolError
from ike.events import IkeSaRekeyed
from ike.host import ExchangeHost
from ike.keys import derive_ike_sa_keys, skeyseed_rekey
from ike.payloads import error_notify, first
from ike.proposals import IkeSuite, accept_ike, select_ike
from ike.sa import ZERO_SPI, IkeSa, Mobility, RekeyState, Succession
from ike.sk import SkCipher

# an IKE SA that a rekey replaced answers the peer's Delete this long, then goes
SUPERSEDED_LINGER = 60.0


def start(host: ExchangeHost, sa: IkeSa, group: int | None, now: float) -> None:
    assert sa.conn is not None and sa.suite is not None
    spi_i = host.new_ike_spi()
    ni = host.random(host.settings.nonce_size)
    dh = (DH_GROUPS[group] if group is not None else sa.suite.dh).generate(host.random)
    payloads: list[Payload] = [
        SecurityAssociation(tuple(s.to_proposal(i + 1, spi_i) for i, s in enumerate(sa.conn.ike))),
        Nonce(ni),
        KeyExchange(dh.group.id, dh.public),
    ]

    def on_response(
        h: ExchangeHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        _on_response(h, s, spi_i, ni, dh, p, n, group is not None)

    sa.rekey_handler = on_response
    sa.rekey_to(RekeyState.REKEYING)
    host.send_request(sa, ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)


def _on_response(
    host: ExchangeHost,
    sa: IkeSa,
    spi_i: bytes,
    ni: bytes,
    dh: DhPrivate,
    payloads: tuple[Payload, ...],
    now: float,
    retried: bool,
) -> None:
    assert sa.conn is not None
    sa.rekey_handler = None
    collision, sa.collision = sa.collision, None
    if sa.rekey is not RekeyState.IDLE:
        sa.rekey_to(RekeyState.IDLE)
    err = error_notify(payloads)
    new = None
    if err is None:
        try:
            new = _accept(host, sa, spi_i, ni, dh, payloads, now)
        except ProtocolError:
            host.stats.unexpected += 1
    if new is None:
        if collision is not None and host.find_sa(collision[2].our_spi) is collision[2]:
            take_over(host, sa, collision[2], now)  # the peer's rekey stands
            return
        if err is not None and err.type == NotifyType.INVALID_KE_PAYLOAD and not retried:
            group = int.from_bytes(err.data[:2], "big") if len(err.data) >= 2 else 0
            if group in {g.id for s in sa.conn.ike for g in s.dh}:
                start(host, sa, group, now)
                return
        if sa.live:
            sa.rekey_at = now + lifetimes.retry_delay(host.random)  # until the hard lifetime
            host.lifetimes_changed(sa)
        return
    if collision is None:
        take_over(host, sa, new, now)
        host.send_ike_delete(sa, now)
        return
    # §2.8.2: the lowest of the four nonces marks the redundant IKE SA, which its
    # initiator deletes; the other exchange's initiator deletes the old one
    peer_ni, our_nr, theirs = collision
    if host.find_sa(theirs.our_spi) is not theirs:  # gone: ours is the only one
        take_over(host, sa, new, now)
        host.send_ike_delete(sa, now)
    elif min(ni, new.nr, peer_ni, our_nr) in (ni, new.nr):
        new.succeed(Succession.REDUNDANT)
        host.send_ike_delete(new, now)
        take_over(host, sa, theirs, now)
    else:  # the peer's is redundant: its initiator deletes it
        theirs.succeed(Succession.REDUNDANT)
        take_over(host, sa, new, now)
        host.send_ike_delete(sa, now)


def _accept(
    host: ExchangeHost,
    sa: IkeSa,
    spi_i: bytes,
    ni: bytes,
    dh: DhPrivate,
    payloads: Sequence[Payload],
    now: float,
) -> IkeSa:
    assert sa.conn is not None
    sa_p, ke, nonce = (
        first(payloads, SecurityAssociation),
        first(payloads, KeyExchange),
        first(payloads, Nonce),
    )
    if not (
        isinstance(sa_p, SecurityAssociation)
        and isinstance(ke, KeyExchange)
        and isinstance(nonce, Nonce)
    ):
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "IKE rekey answer incomplete")
    suite = accept_ike(sa.conn.ike, sa_p)
    spi_r = sa_p.proposals[0].spi
    if len(spi_r) != 8 or spi_r == ZERO_SPI or host.find_sa(spi_r) is not None:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "IKE rekey answer without a new SPI")
    if ke.group != suite.dh.id or ke.group != dh.group.id:
        raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD, "KEr group differs")
    g_ir = dh.exchange(ke.data)
    return _rekeyed_sa(host, sa, True, spi_i, spi_r, suite, (ni, nonce.data, g_ir), now)


def respond(
    host: ExchangeHost,
    sa: IkeSa,
    sa_p: SecurityAssociation,
    ni: bytes,
    ke: KeyExchange | None,
    now: float,
) -> list[Payload]:
    assert sa.conn is not None
    ours = sa.outstanding
    collision = ours is not None and ours.on_response is sa.rekey_handler
    if (ours is not None and not collision) or sa.collision is not None:
        # finish what is under way first (§2.25)
        raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "an exchange is under way")
    if ke is None:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "IKE rekey without KEi")
    answer, suite = select_ike(sa.conn.ike, sa_p.proposals, ke.group)
    if ke.group != suite.dh.id:
        raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD, data=struct.pack("!H", suite.dh.id))
    spi_i = next((p.spi for p in sa_p.proposals if p.number == answer.number), b"")
    if len(spi_i) != 8 or spi_i == ZERO_SPI:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "IKE rekey without a new SPI")
    dh = suite.dh.generate(host.random)
    g_ir = dh.exchange(ke.data)
    spi_r = host.new_ike_spi()
    nr = host.random(host.settings.nonce_size)
    new = _rekeyed_sa(host, sa, False, spi_i, spi_r, suite, (ni, nr, g_ir), now)
    if collision:  # both ends rekey: settled when our answer comes (§2.8.2)
        host.set_expiry(new, now + SUPERSEDED_LINGER)
        sa.collision = (ni, nr, new)
        sa.rekey_to(RekeyState.COLLIDING)
    else:
        take_over(host, sa, new, now)
    return [
        SecurityAssociation((replace(answer, spi=spi_r),)),
        Nonce(nr),
        KeyExchange(suite.dh.id, dh.public),
    ]


def _rekeyed_sa(
    host: ExchangeHost,
    old: IkeSa,
    initiator: bool,
    spi_i: bytes,
    spi_r: bytes,
    suite: IkeSuite,
    exchange: tuple[bytes, bytes, bytes],
    now: float,
) -> IkeSa:
    """The new IKE SA of a rekey (§2.18): SKEYSEED = prf(SK_d (old), g^ir | Ni | Nr)
    with the old SA's PRF; the rekey initiator is the new SA's original initiator."""
    assert old.suite is not None and old.keys is not None
    ni, nr, g_ir = exchange
    new = IkeSa(host.new_uid(), initiator, old.local, old.remote, rekeyed=True)
    new.conn = old.conn
    new.spi_i, new.spi_r = spi_i, spi_r
    new.suite, new.ni, new.nr = suite, ni, nr
    seed = skeyseed_rekey(old.suite.prf, old.keys.sk_d, g_ir, ni, nr)
    new.keys = derive_ike_sa_keys(suite, seed, ni, nr, spi_i, spi_r)
    new.sk = SkCipher(suite, new.keys, initiator=initiator, random=host.random)
    new.established_at = now
    new.nat, new.behind_nat = old.nat, old.behind_nat
    new.redirect_peer, new.redirect_self = old.redirect_peer, old.redirect_self
    if old.mobike:
        new.mobility_to(Mobility.MOBIKE)
    new.peer_addrs = old.peer_addrs
    new.local_id, new.remote_id = old.local_id, old.remote_id
    host.add_sa(new)
    return new


def take_over(host: ExchangeHost, old: IkeSa, new: IkeSa, now: float) -> None:
    """`new` replaces `old`: the handle, the Child SAs and queued requests move;
    `old` is superseded and goes without events (deleted by one side, §1.3.2)."""
    assert new.suite is not None
    host.swap_handles(old, new)
    new.children, old.children = old.children, {}
    new.queue, old.queue = old.queue, deque()
    new.child_requests, old.child_requests = old.child_requests, []
    new.child_retries, old.child_retries = old.child_retries, []
    new.succeed(Succession.CURRENT)
    old.succeed(Succession.REKEYED)
    new.esp_seen = old.esp_seen  # the Child SAs (and their counters) move along
    old.rekey_at = old.hard_at = old.life_at = None
    new.expire_at = None
    old.timer_at = new.timer_at = None  # heap entries follow the handle: push again
    lifetimes.start_ike(new, host.settings, host.random, now)
    host.lifetimes_changed(new)
    host.set_expiry(old, now + SUPERSEDED_LINGER)
    host.emit(
        IkeSaRekeyed(
            new.uid,
            new.name,
            old.spi_i,
            old.spi_r,
            new.spi_i,
            new.spi_r,
            new.suite.name,
            now,
            new.rekey_at,
            new.hard_at,
            initiator=new.initiator,
        )
    )
    host.send_queued(new, now)
