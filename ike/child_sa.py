"""The Child SA exchanges (RFC 7296 §1.3): IKE_AUTH's Child SA, CREATE_CHILD_SA to create
or rekey one, and INFORMATIONAL Delete(ESP), in both roles.

Theory of operation
-------------------
* Responder: the Child config is the first whose selectors intersect the peer's TSi/TSr
  and whose ESP proposals meet the peer's; the selectors are narrowed (§2.9), a DH group
  in the chosen proposal means PFS (a fresh KE, §1.3.1), and the new SA is installed at
  once. IKE_AUTH's Child part never fails the IKE SA (§1.2): it answers with the NOTIFY
  and reports ChildSaFailed.
* Initiator: the answer must be a choice from our proposals, inside our selectors and in
  our mode; else the responder's SA is deleted again. INVALID_KE_PAYLOAD is retried once
  with the group the responder names, TEMPORARY_FAILURE after 10-20 s (§2.25).
* Rekey (§1.3.3, §2.8): make-before-break. ChildSaRekeyed carries the new SA; the old one
  stays (REKEYED) until the rekey initiator's Delete of it completes. Only the rekey
  initiator sends on the new SA at once; the responder keeps sending on the old one
  (``outbound_from``) until that Delete arrives or ``switch_at`` passes (the initiator's
  whole retransmission span): ChildSaOutboundSwitched. Simultaneous rekeys of one SA
  (§2.8.1): the exchange with the lowest of the four nonces made the redundant SA, which
  its initiator deletes; the other initiator deletes the old SA.
* Keys: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) of the exchange that made the SA.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ike import lifetimes, window
from ike.codec import (
    Delete,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelectors,
)
from ike.config import CompiledChild, CompiledConnection
from ike.constants import ExchangeType, NotifyType, PayloadType, ProtocolId, name_of
from ike.crypto import DH_GROUPS
from ike.errors import ProtocolError, SpiExhausted
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaOutboundSwitched,
    ChildSaRekeyed,
)
from ike.host import ExchangeHost
from ike.keys import derive_child_sa_keys
from ike.payloads import error_notify, first, first_notify
from ike.proposals import EspSuite, accept_esp, select_esp
from ike.sa import (
    ChildEndReason,
    ChildRekey,
    ChildRequest,
    ChildSa,
    ChildState,
    IkeSa,
    PendingChild,
)
from ike.ts import TrafficSelector, covered, ip, narrow, ts_for_address
from ike.window import ResponseHandler


@dataclass(slots=True)
class _CreateResponse:
    """Our side of a peer's CREATE_CHILD_SA request for a Child SA (`_select`)."""

    configs: tuple[CompiledChild, ...]
    ke: KeyExchange | None
    ni: bytes
    nr: bytes
    replaces: ChildSa | None
    made: ChildSa | None = None


def start_create(
    host: ExchangeHost,
    sa: IkeSa,
    ch: CompiledChild,
    packet_ts: tuple[TrafficSelector, TrafficSelector] | None,
    now: float,
) -> None:
    """Our CREATE_CHILD_SA for an additional Child SA (§1.3.1); `packet_ts`: the packet
    that triggered it (a kernel ACQUIRE), proposed first (§2.9)."""
    first_i, first_r = ((packet_ts[0],), (packet_ts[1],)) if packet_ts else ((), ())
    tsi = first_i + (ch.local_ts or (ts_for_address(ip(sa.local[0])),))
    tsr = first_r + (ch.remote_ts or (ts_for_address(ip(sa.remote[0])),))
    request(host, sa, ch, tsi, tsr, None, None, now)


def respond_in_auth(
    host: ExchangeHost,
    sa: IkeSa,
    conn: CompiledConnection,
    sa_p: SecurityAssociation,
    payloads: Sequence[Payload],
    now: float,
) -> list[Payload]:
    """The Child part of our IKE_AUTH answer: its SA and TS payloads, or the NOTIFY
    that refuses it (a ChildSaFailed event names the Child config we tried, if any)."""
    tried: list[str] = []
    try:
        return _select(host, sa, conn, sa_p, payloads, now, tried)
    except ProtocolError as exc:
        child = tried[0] if tried else ""
        host.emit(ChildSaFailed(sa.uid, conn.name, child, exc.notify.name, now))
        return [Notify(exc.notify, exc.data)]


def _select(
    host: ExchangeHost,
    sa: IkeSa,
    conn: CompiledConnection,
    sa_p: SecurityAssociation,
    payloads: Sequence[Payload],
    now: float,
    tried: list[str],
    create: _CreateResponse | None = None,
) -> list[Payload]:
    """Pick the Child config and ESP proposal, narrow the selectors, install. With
    `create` (a CREATE_CHILD_SA request) only its configs are tried, a DH group in
    the ESP proposal means PFS (a fresh KE, §1.3.1) and Nr/KEr join the answer."""
    tsi = first(payloads, TrafficSelectors, PayloadType.TSi)
    tsr = first(payloads, TrafficSelectors, PayloadType.TSr)
    if not isinstance(tsi, TrafficSelectors) or not isinstance(tsr, TrafficSelectors):
        raise ProtocolError(NotifyType.TS_UNACCEPTABLE, "no traffic selectors")
    want_transport = first_notify(payloads, NotifyType.USE_TRANSPORT_MODE) is not None
    local_addr = ip(sa.local[0])
    remote_addr = ip(sa.remote[0])
    ts_matched = False
    for ch in create.configs if create else conn.children:
        if ch.transport and not want_transport:
            continue
        ni = narrow(tsi.selectors, ch.remote_ts or (ts_for_address(remote_addr),))
        nr = narrow(tsr.selectors, ch.local_ts or (ts_for_address(local_addr),))
        if not ni or not nr:
            continue
        ts_matched = True
        tried.append(ch.name)
        try:
            answer, suite, peer_spi = select_esp(
                ch.esp, sa_p.proposals, bytes(4), with_dh=create is not None
            )
        except ProtocolError:
            continue
        pfs: list[Payload] = []
        exchange = None
        if create is not None:
            g_ir = b""
            if suite.dh is not None:
                ke = create.ke
                if ke is None or ke.group != suite.dh.id:
                    raise ProtocolError(
                        NotifyType.INVALID_KE_PAYLOAD, data=struct.pack("!H", suite.dh.id)
                    )
                dh = suite.dh.generate(host.random)
                g_ir = dh.exchange(ke.data)
                pfs = [KeyExchange(suite.dh.id, dh.public)]
            pfs.insert(0, Nonce(create.nr))
            exchange = (False, create.ni, create.nr, g_ir)
        replaces = create.replaces if create is not None else None
        try:
            spi_in = host.spis.allocate(replaces.spi_in if replaces is not None else None)
        except SpiExhausted:
            raise ProtocolError(NotifyType.NO_ADDITIONAL_SAS, "no inbound SPI left") from None
        answer = replace(answer, spi=spi_in.to_bytes(4, "big"))
        transport = want_transport and ch.transport
        peer = int.from_bytes(peer_spi, "big")
        child = ChildSa(ch, spi_in, peer, suite, transport, nr, ni, now)
        if create is not None:
            create.made = child
        install(host, sa, child, exchange, create.replaces if create else None)
        out: list[Payload] = [Notify(NotifyType.USE_TRANSPORT_MODE)] if transport else []
        return out + [
            SecurityAssociation((answer,)),
            *pfs,
            TrafficSelectors(PayloadType.TSi, ni),
            TrafficSelectors(PayloadType.TSr, nr),
        ]
    if not ts_matched:
        raise ProtocolError(NotifyType.TS_UNACCEPTABLE)
    raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN)


def install(
    host: ExchangeHost,
    sa: IkeSa,
    child: ChildSa,
    exchange: tuple[bool, bytes, bytes, bytes] | None = None,
    replaces: ChildSa | None = None,
) -> None:
    """Record a new Child SA and emit its keys: ChildSaEstablished, or ChildSaRekeyed
    when it `replaces` one. `exchange` = (we initiated, Ni, Nr, g^ir) of the
    CREATE_CHILD_SA that made it (§2.17); None: the IKE_AUTH exchange."""
    assert sa.suite is not None and sa.keys is not None and sa.conn is not None
    suite, ch, transport = child.suite, child.config, child.transport
    spi_in, spi_out, now = child.spi_in, child.spi_out, child.installed_at
    initiator, ni, nr, g_ir = exchange or (sa.initiator, sa.ni, sa.nr, b"")
    k = derive_child_sa_keys(sa.suite.prf, suite, sa.keys.sk_d, ni, nr, g_ir)
    if initiator:
        e_out, a_out, e_in, a_in = k.encr_i, k.integ_i, k.encr_r, k.integ_r
    else:
        e_out, a_out, e_in, a_in = k.encr_r, k.integ_r, k.encr_i, k.integ_i
    sa.children[spi_in] = child
    lifetimes.start_child(child, host.random, now)
    host.lifetimes_changed(sa)
    encr, integ = suite.encr, suite.integ
    _report(
        host,
        sa,
        child,
        replaces,
        initiator,  # of this exchange: the rekey initiator switches outbound at once
        ChildSaEstablished(
            ike_sa=sa.uid,
            connection=sa.conn.name,
            child=ch.name,
            initiator=sa.initiator,
            spi_in=spi_in,
            spi_out=spi_out,
            mode="transport" if transport else "tunnel",
            local_addr=sa.local[0],
            remote_addr=sa.remote[0],
            encap=(sa.local[1], sa.remote[1]) if sa.nat else None,
            local_ts=child.local_ts,
            remote_ts=child.remote_ts,
            proposal=suite.name,
            encr_alg=encr.kernel_name,
            icv_bits=encr.icv_size * 8,
            integ_alg=integ.kernel_name if integ else None,
            integ_trunc_bits=integ.icv_size * 8 if integ else 0,
            esn=suite.esn,
            encr_key_in=e_in,
            encr_key_out=e_out,
            integ_key_in=a_in,
            integ_key_out=a_out,
            time=now,
            rekey_at=child.rekey_at,
            expire_at=child.expire_at,
        ),
    )


def _report(
    host: ExchangeHost,
    sa: IkeSa,
    child: ChildSa,
    replaces: ChildSa | None,
    outbound: bool,
    e: ChildSaEstablished,
) -> None:
    """ChildSaEstablished, or ChildSaRekeyed when `child` replaces an SA. Only the
    rekey initiator sends on the new SA at once (`outbound`); the responder installs
    the new inbound SA and keeps sending on the old one until the initiator's Delete
    of it arrives, because until the initiator has our answer it cannot decrypt the
    new SA (RFC 7296 §2.8; strongSwan does the same): ChildSaOutboundSwitched."""
    if replaces is None:
        host.emit(e)
        return
    if not outbound:
        child.outbound_from = replaces.outbound_from or replaces
        child.switch_at = e.time + window.retransmission_span(host.settings)
    replaces.outbound_from = replaces.switch_at = None  # superseded by `child`
    host.lifetimes_changed(sa)
    host.emit(
        ChildSaRekeyed(
            e.ike_sa,
            e.connection,
            e.child,
            replaces.spi_in,
            replaces.spi_out,
            e,
            e.time,
            outbound,
        )
    )


def switch_outbound(host: ExchangeHost, sa: IkeSa, child: ChildSa, reason: str, now: float) -> None:
    """The rekey responder now sends on `child` (its old SA is being deleted, or the
    initiator's Delete did not come within `_switch_wait`)."""
    old = child.outbound_from
    child.outbound_from = child.switch_at = None
    if old is None:
        return
    host.emit(
        ChildSaOutboundSwitched(
            sa.uid,
            sa.name,
            child.config.name,
            child.spi_in,
            child.spi_out,
            old.spi_in,
            old.spi_out,
            reason,
            now,
        )
    )


def accept_from_auth(
    host: ExchangeHost, sa: IkeSa, pending: PendingChild, payloads: Sequence[Payload], now: float
) -> None:
    suite, peer, tsi, tsr, transport = _check_answer(
        host, pending.config, pending.tsi, pending.tsr, payloads
    )
    child = ChildSa(pending.config, pending.spi_in, peer, suite, transport, tsi, tsr, now)
    install(host, sa, child)


def deleted(
    host: ExchangeHost, sa: IkeSa, child: ChildSa, reason: ChildEndReason | str, now: float
) -> None:
    """The one way a Child SA ends: out of its IKE SA, its SPI released, ChildSaDeleted.
    `reason` is why it ended on its own, or the end text of its IKE SA that ended."""
    text = reason.value if isinstance(reason, ChildEndReason) else reason
    sa.children.pop(child.spi_in, None)
    host.spis.release(child.spi_in)
    child.outbound_from = child.switch_at = None
    for successor in [c for c in sa.children.values() if c.outbound_from is child]:
        # the old SA goes (normally the rekey initiator's Delete): send on the new one
        switch_outbound(host, sa, successor, "old SA deleted", now)
    host.emit(
        ChildSaDeleted(sa.uid, sa.name, child.config.name, child.spi_in, child.spi_out, text, now)
    )


def start_rekey(host: ExchangeHost, sa: IkeSa, child: ChildSa, now: float) -> None:
    child.rekey_to(ChildRekey.REKEYING)
    request(host, sa, child.config, child.local_ts, child.remote_ts, child, None, now)


def request(
    host: ExchangeHost,
    sa: IkeSa,
    ch: CompiledChild,
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
    old: ChildSa | None,
    group: int | None,
    now: float,
) -> None:
    try:
        spi_in = host.spis.allocate(old.spi_in if old is not None else None)
    except SpiExhausted:
        if old is not None:
            old.rekey_done()
            old.rekey_at = now + lifetimes.retry_delay(host.random)
            host.lifetimes_changed(sa)
        host.emit(ChildSaFailed(sa.uid, sa.name, ch.name, "no inbound SPI left", now))
        return
    groups = [g for spec in ch.esp for g in spec.dh]
    dh_group = DH_GROUPS[group] if group is not None else (groups[0] if groups else None)
    dh = dh_group.generate(host.random) if dh_group is not None else None
    ni = host.random(host.settings.nonce_size)
    req = ChildRequest(ch, spi_in, tsi, tsr, ni, dh, old, group is not None)
    sa.child_requests.append(req)
    payloads: list[Payload] = []
    if old is not None:
        payloads.append(
            Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, old.spi_in.to_bytes(4, "big"))
        )
    if ch.transport:
        payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
    spi = spi_in.to_bytes(4, "big")
    payloads += [
        SecurityAssociation(tuple(s.to_proposal(i + 1, spi) for i, s in enumerate(ch.esp))),
        Nonce(ni),
    ]
    if dh is not None:
        payloads.append(KeyExchange(dh.group.id, dh.public))
    payloads += [TrafficSelectors(PayloadType.TSi, tsi), TrafficSelectors(PayloadType.TSr, tsr)]

    def on_response(
        h: ExchangeHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        _on_response(h, req, s, p, n)

    host.send_request(sa, ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)


def _on_response(
    host: ExchangeHost, req: ChildRequest, sa: IkeSa, payloads: tuple[Payload, ...], now: float
) -> None:
    if req not in sa.child_requests:
        return  # the IKE SA released it meanwhile
    sa.child_requests.remove(req)
    old = req.old
    live_old = old is not None and sa.children.get(old.spi_in) is old
    err = error_notify(payloads)
    if err is not None:
        host.spis.release(req.spi_in)
        if err.type == NotifyType.INVALID_KE_PAYLOAD and not req.retried:
            group = int.from_bytes(err.data[:2], "big") if len(err.data) >= 2 else 0
            if group in {g.id for spec in req.config.esp for g in spec.dh}:
                request(host, sa, req.config, req.tsi, req.tsr, old, group, now)
                return
        if old is None and err.type == NotifyType.TEMPORARY_FAILURE:
            sa.child_retries.append((now + lifetimes.retry_delay(host.random), req.config))  # §2.25
            host.lifetimes_changed(sa)
            return
        _request_failed(host, sa, req, name_of(NotifyType, err.type), now)
        if old is not None and live_old and not old.rekeyed:
            if err.type == NotifyType.CHILD_SA_NOT_FOUND:  # the peer has no such SA
                deleted(host, sa, old, ChildEndReason.NOT_FOUND, now)
            elif err.type == NotifyType.TEMPORARY_FAILURE:
                old.rekey_at = now + lifetimes.retry_delay(host.random)
                host.lifetimes_changed(sa)
        return
    try:
        child, nr, g_ir = _accept_created(host, req, sa, payloads, now)
    except ProtocolError as exc:
        host.spis.release(req.spi_in)
        _request_failed(host, sa, req, exc.notify.name, now)
        send_delete(host, sa, req.spi_in, now)  # the responder made it (§1.4.1)
        return
    exchange = (True, req.ni, nr, g_ir)
    if old is None:
        install(host, sa, child, exchange)
        return
    collision = old.rekey_done()
    if not live_old:  # deleted while we rekeyed it (a crossing Delete)
        _discard(host, sa, child, now)
        return
    if collision is None:
        old.rekey_to(ChildRekey.REKEYED)
        install(host, sa, child, exchange, old)
        _delete_rekeyed(host, sa, old, now)
        return
    # §2.8.1: both ends rekeyed `old`; the exchange with the lowest of the four
    # nonces made the redundant SA, which its initiator deletes; the initiator of the
    # other exchange deletes `old`
    peer_ni, our_nr, theirs = collision
    if min(req.ni, nr, peer_ni, our_nr) in (req.ni, nr):
        _discard(host, sa, child, now)
    elif sa.children.get(theirs.spi_in) is theirs:
        theirs.rekey_to(ChildRekey.REKEYED)
        install(host, sa, child, exchange, theirs)
        _delete_rekeyed(host, sa, old, now)
    else:  # the peer already deleted its redundant SA
        install(host, sa, child, exchange)
        _delete_rekeyed(host, sa, old, now)


def _request_failed(
    host: ExchangeHost, sa: IkeSa, req: ChildRequest, reason: str, now: float
) -> None:
    old = req.old
    if old is not None:
        collision = old.rekey_done()
        if collision is not None or old.rekeyed:
            return  # the peer's rekey of it stands: nothing failed
    host.emit(ChildSaFailed(sa.uid, sa.name, req.config.name, reason, now))


def _accept_created(
    host: ExchangeHost, req: ChildRequest, sa: IkeSa, payloads: Sequence[Payload], now: float
) -> tuple[ChildSa, bytes, bytes]:
    nonce = first(payloads, Nonce)
    if not isinstance(nonce, Nonce):
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA answer without Nr")
    suite, peer, tsi, tsr, transport = _check_answer(
        host, req.config, req.tsi, req.tsr, payloads, with_dh=True
    )
    g_ir = b""
    if suite.dh is not None:
        ke = first(payloads, KeyExchange)
        if (
            req.dh is None
            or not isinstance(ke, KeyExchange)
            or ke.group != suite.dh.id
            or req.dh.group.id != suite.dh.id
        ):
            raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD, "KEr does not match")
        g_ir = req.dh.exchange(ke.data)
    child = ChildSa(req.config, req.spi_in, peer, suite, transport, tsi, tsr, now)
    return child, nonce.data, g_ir


def _check_answer(
    host: ExchangeHost,
    config: CompiledChild,
    want_tsi: tuple[TrafficSelector, ...],
    want_tsr: tuple[TrafficSelector, ...],
    payloads: Sequence[Payload],
    *,
    with_dh: bool = False,
) -> tuple[EspSuite, int, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...], bool]:
    """Initiator: the responder's Child answer must be a choice from our proposals,
    inside our selectors and in our mode. Returns (suite, its SPI, TSi, TSr, transport)."""
    sa_p = first(payloads, SecurityAssociation)
    tsi = first(payloads, TrafficSelectors, PayloadType.TSi)
    tsr = first(payloads, TrafficSelectors, PayloadType.TSr)
    if not (
        isinstance(sa_p, SecurityAssociation)
        and isinstance(tsi, TrafficSelectors)
        and isinstance(tsr, TrafficSelectors)
    ):
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "Child SA answer incomplete")
    suite, peer_spi = accept_esp(config.esp, sa_p, with_dh=with_dh)
    if (
        not tsi.selectors
        or not tsr.selectors
        or not all(covered(t, want_tsi) for t in tsi.selectors)
        or not all(covered(t, want_tsr) for t in tsr.selectors)
    ):
        raise ProtocolError(NotifyType.TS_UNACCEPTABLE, "responder widened the selectors")
    transport = first_notify(payloads, NotifyType.USE_TRANSPORT_MODE) is not None
    if transport != config.transport:
        raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "mode differs from the request")
    peer = int.from_bytes(peer_spi, "big")
    return suite, peer, tsi.selectors, tsr.selectors, transport


def _delete_rekeyed(host: ExchangeHost, sa: IkeSa, old: ChildSa, now: float) -> None:
    """The rekey initiator deletes the old SA (§1.3.3); ChildSaDeleted 'rekeyed'."""
    old.rekey_to(ChildRekey.REKEYED)
    old.move(ChildState.DELETING)
    host.lifetimes_changed(sa)

    def on_response(
        h: ExchangeHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        if s.children.get(old.spi_in) is old:
            deleted(h, s, old, ChildEndReason.REKEYED, n)

    send_delete(host, sa, old.spi_in, now, on_response)


def _discard(host: ExchangeHost, sa: IkeSa, child: ChildSa, now: float) -> None:
    """A Child SA we negotiated but never report (redundant after a collision, or its
    old SA is gone): the peer deletes its side."""
    host.spis.release(child.spi_in)
    send_delete(host, sa, child.spi_in, now)


def send_delete(
    host: ExchangeHost,
    sa: IkeSa,
    spi_in: int,
    now: float,
    on_response: ResponseHandler | None = None,
) -> None:
    """INFORMATIONAL Delete(ESP) naming our inbound SPI (§1.4.1)."""
    host.send_request(
        sa,
        ExchangeType.INFORMATIONAL,
        [Delete(ProtocolId.ESP, 4, (spi_in.to_bytes(4, "big"),))],
        on_response or window.ignore_response,
        now,
    )


def delete(host: ExchangeHost, sa: IkeSa, child: ChildSa, now: float) -> None:
    """Our INFORMATIONAL Delete(ESP) of `child`: ChildSaDeleted follows the answer."""
    if child.state is ChildState.DELETING:
        return
    child.move(ChildState.DELETING)

    def on_response(
        h: ExchangeHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        # Whatever the peer answers, our request named the SA: it is gone on our side.
        for c in [c for c in s.children.values() if c.state is ChildState.DELETING]:
            deleted(h, s, c, ChildEndReason.REKEYED if c.rekeyed else ChildEndReason.DELETED, n)

    send_delete(host, sa, child.spi_in, now, on_response)


def on_peer_delete(host: ExchangeHost, sa: IkeSa, spis: Sequence[bytes], now: float) -> list[bytes]:
    """The peer's Delete(ESP) of its outbound SPIs (§1.4.1): our inbound SPIs of the
    Child SAs it named, for our answer; each Child SA is gone ("rekeyed" when it was
    replaced already, else "deleted by peer")."""
    ours: list[bytes] = []
    for spi in spis:
        out_spi = int.from_bytes(spi, "big")
        child = next((c for c in sa.children.values() if c.spi_out == out_spi), None)
        if child is not None:
            ours.append(child.spi_in.to_bytes(4, "big"))
            gone = ChildEndReason.REKEYED if child.rekeyed else ChildEndReason.DELETED_BY_PEER
            deleted(host, sa, child, gone, now)
    return ours


def respond_create(
    host: ExchangeHost,
    sa: IkeSa,
    sa_p: SecurityAssociation,
    nonce: Nonce,
    ke: KeyExchange | None,
    payloads: Sequence[Payload],
    now: float,
) -> list[Payload]:
    """Our answer to the peer's CREATE_CHILD_SA for a new Child SA or, with REKEY_SA, the
    rekey of one (§1.3.1, §1.3.3); ProtocolError refuses it (ChildSaFailed unless the
    peer just has to retry with our DH group)."""
    assert sa.conn is not None
    rekey = first_notify(payloads, NotifyType.REKEY_SA)
    old = None
    if rekey is not None:
        if rekey.protocol != ProtocolId.ESP or len(rekey.spi) != 4:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "REKEY_SA without an ESP SPI")
        spi = int.from_bytes(rekey.spi, "big")
        old = next((c for c in sa.children.values() if c.spi_out == spi), None)
        if old is None:
            raise ProtocolError(NotifyType.CHILD_SA_NOT_FOUND)
        if old.closing:  # we are closing it (§2.25)
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "Child SA is being closed")
    nr = host.random(host.settings.nonce_size)
    configs = (old.config,) if old is not None else sa.conn.children
    create = _CreateResponse(configs, ke, nonce.data, nr, old)
    tried: list[str] = []
    try:
        out = _select(host, sa, sa.conn, sa_p, payloads, now, tried, create)
    except ProtocolError as exc:
        if exc.notify != NotifyType.INVALID_KE_PAYLOAD:  # else the peer retries
            name = old.config.name if old else (tried[0] if tried else "")
            host.emit(ChildSaFailed(sa.uid, sa.name, name, exc.notify.name, now))
        raise
    if old is not None and create.made is not None:
        if old.rekeying:  # we are rekeying it too: settled when our answer comes
            old.collision = (nonce.data, nr, create.made)
            old.rekey_to(ChildRekey.COLLIDING)
        else:
            old.rekey_to(ChildRekey.REKEYED)
        host.lifetimes_changed(sa)
    return out
