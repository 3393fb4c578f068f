"""The IKE_AUTH exchange (RFC 7296 §1.2, §2.15), both roles: who the peer is, and the
first Child SA.

* Initiator: IDi, CERT/CERTREQ, IDr (the `remote_id` we expect), AUTH (ike/auth.py), the
  MOBIKE and Child SA payloads. The answer must name the identity we expect and verify;
  else the peer is told AUTHENTICATION_FAILED in an INFORMATIONAL and the SA fails.
* Responder: IDr is a hint (strongSwan): a connection with that local ID is preferred,
  else the first candidate that accepts the peer's ID and AUTH method. A failure is
  answered AUTHENTICATION_FAILED; the SA lingers CLOSED to answer retransmits.
* Either way, once established: IkeSaEstablished, lifetimes start, MOBIKE is negotiated,
  and the Child SA goes to ike/child_sa.py (its failure never fails the IKE SA, §1.2).

An authentication method of several IKE_AUTH round trips (EAP, §2.16; configuration
payloads, §3.15, ride along) belongs here: the responder stays AUTH_WAIT, so the
engine keeps dispatching each further IKE_AUTH request to `on_request`, and the
initiator's `_on_response` sends the next request instead of finishing; the dispatch
table does not change.
"""

from __future__ import annotations

from ike import auth, child_sa, lifetimes, mobike, redirect, window
from ike.codec import (
    Authentication,
    Delete,
    Identification,
    Message,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelectors,
)
from ike.config import CompiledConnection, format_identity
from ike.constants import ExchangeType, IdType, NotifyType, PayloadType, ProtocolId, name_of
from ike.errors import ProtocolError, SpiExhausted
from ike.events import ChildSaFailed, IkeSaEstablished, IkeSaRedirected
from ike.host import ExchangeHost
from ike.payloads import error_notify, first, first_notify, notify_type
from ike.pki.names import same_identity
from ike.sa import After, EndReason, IkeSa, Mobility, PendingChild, State, Succession
from ike.ts import ip, ts_for_address


def send_request(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """Our IKE_AUTH request: IDi, [CERT,] [CERTREQ,] [IDr,] AUTH and the first Child SA."""
    conn = sa.conn
    assert conn is not None and sa.keys is not None and sa.suite is not None
    assert sa.pending_child is not None
    sa.local_id = conn.local_id or _id_for_address(sa.local[0])
    idi = Identification(PayloadType.IDi, *sa.local_id)
    # IDi, [CERT,] [CERTREQ,] [IDr,] AUTH (RFC 7296 §1.2)
    payloads: list[Payload] = [idi, *auth.cert_payloads(conn, sa.peer_hints, certreq=True)]
    if conn.remote_id is not None:
        payloads.append(Identification(PayloadType.IDr, *conn.remote_id))
    signed = auth.SignedData(sa.suite.prf, sa.init_request, sa.nr, sa.keys.sk_pi, idi.body)
    payloads.append(auth.make_auth(conn, sa.peer_hints, signed))
    ch = sa.pending_child.config
    try:
        spi_in = host.spis.allocate()
    except SpiExhausted:
        raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "no inbound SPI left") from None
    # the triggering packet's selectors first, if any (§2.9)
    tsi = sa.pending_child.tsi + (ch.local_ts or (ts_for_address(ip(sa.local[0])),))
    tsr = sa.pending_child.tsr + (ch.remote_ts or (ts_for_address(ip(sa.remote[0])),))
    sa.pending_child = PendingChild(ch, spi_in, tsi, tsr)
    if ch.transport:
        payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
    payloads += mobike.auth_payloads(conn, sa.local)
    spi = spi_in.to_bytes(4, "big")
    payloads += [
        SecurityAssociation(
            tuple(s.to_proposal(i + 1, spi, with_dh=False) for i, s in enumerate(ch.esp))
        ),
        TrafficSelectors(PayloadType.TSi, tsi),
        TrafficSelectors(PayloadType.TSr, tsr),
    ]
    host.send_request(sa, ExchangeType.IKE_AUTH, payloads, _on_response, now)


def on_request(
    host: ExchangeHost,
    sa: IkeSa,
    msg: Message,
    payloads: tuple[Payload, ...],
    data: bytes,
    now: float,
) -> list[Payload]:
    """The initiator's IKE_AUTH request (the engine's dispatch for AUTH_WAIT): pick the
    connection, verify the peer, answer with ours and the Child SA (or a REDIRECT)."""
    assert sa.suite is not None and sa.keys is not None
    idi = first(payloads, Identification, PayloadType.IDi)
    idr = first(payloads, Identification, PayloadType.IDr)
    auth_p = first(payloads, Authentication)
    if not isinstance(idi, Identification) or not isinstance(auth_p, Authentication):
        return _failed(host, sa, "IKE_AUTH without IDi or AUTH", now)
    peer_id = (idi.id_type, idi.data)
    # IDr is a hint (§2.5 / strongSwan): prefer a connection with that local ID,
    # else any connection that accepts the peer's ID and AUTH method (PSK or signature).
    by_idi = [
        c
        for c in sa.candidates
        if (c.remote_id is None or same_identity(c.remote_id, peer_id))
        and auth.accepts_method(c, auth_p.method)
    ]
    conn = None
    if isinstance(idr, Identification):
        wanted = (idr.id_type, idr.data)
        conn = next(
            (c for c in by_idi if (c.local_id or _id_for_address(sa.local[0])) == wanted),
            None,
        )
    if conn is None and by_idi:
        conn = by_idi[0]
    if conn is None:
        return _failed(host, sa, "no connection matches the peer's identity and AUTH method", now)
    signed = auth.SignedData(sa.suite.prf, sa.init_request, sa.nr, sa.keys.sk_pi, idi.body)
    try:
        auth.check_auth(conn, payloads, auth_p, peer_id, signed, now)
    except auth.AuthFailure as exc:
        return _failed(host, sa, str(exc), now, conn)
    sa.conn = conn
    sa.remote_id = peer_id
    sa.local_id = conn.local_id or _id_for_address(sa.local[0])
    my_id = Identification(PayloadType.IDr, *sa.local_id)
    # the peer's CERTREQs in this request tell which of our intermediates it lacks
    hints = auth.peer_hints(payloads, sa.peer_hints)
    out: list[Payload] = [my_id, *auth.cert_payloads(conn, hints, certreq=False)]
    mine = auth.SignedData(sa.suite.prf, sa.init_response, sa.ni, sa.keys.sk_pr, my_id.body)
    out.append(auth.make_auth(conn, hints, mine))
    moved = redirect.auth_notify(conn) if sa.redirect_peer else None
    if moved is not None:
        # RFC 5685 §6: the peer is authenticated; our IDr/AUTH and REDIRECT, no Child
        # SA; the IKE SA waits for the peer's Delete (or expires), without events
        host.stats.redirects_sent += 1
        host.cookies.half_open.discard(sa)
        sa.move(State.DELETING)
        sa.succeed(Succession.ABANDONED)
        host.set_expiry(sa, now + host.settings.half_open_timeout)
        gateway = conn.config.redirect_to
        host.emit(IkeSaRedirected(sa.uid, conn.name, False, "auth", sa.remote, gateway, now))
        return [*out, moved]
    mobike.negotiate(host, sa, payloads)
    if sa.mobility is not Mobility.FIXED:  # MOBIKE in use
        out += mobike.auth_payloads(conn, sa.local)
    _established(host, sa, now)
    sa_p = first(payloads, SecurityAssociation)
    if isinstance(sa_p, SecurityAssociation):
        out += child_sa.respond_in_auth(host, sa, conn, sa_p, payloads, now)
    return out


def _failed(
    host: ExchangeHost, sa: IkeSa, why: str, now: float, conn: CompiledConnection | None = None
) -> list[Payload]:
    host.stats.auth_failures += 1
    # answered, then lingers for retransmits and goes
    host.end_sa(sa, EndReason.AUTHENTICATION_FAILED, now, detail=why, conn=conn, after=After.LINGER)
    raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, why)


def _established(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    assert sa.conn is not None and sa.suite is not None
    sa.move(State.ESTABLISHED)
    sa.established_at = now
    # only IKE_AUTH needed these (RealMessage1/2, connection choice): free the memory
    sa.init_request = sa.init_response = b""
    sa.peer_hints = None
    sa.candidates = ()
    host.cookies.half_open.discard(sa)
    host.set_expiry(sa, None)
    lifetimes.start_ike(sa, host.settings, host.random, now)
    host.lifetimes_changed(sa)
    host.stats.handshakes += 1
    host.emit(
        IkeSaEstablished(
            sa.uid,
            sa.conn.name,
            sa.initiator,
            sa.spi_i,
            sa.spi_r,
            sa.local,
            sa.remote,
            format_identity(*sa.local_id),
            format_identity(*sa.remote_id),
            sa.suite.name,
            sa.nat,
            now,
            sa.rekey_at,
            sa.hard_at,
            sa.mobike,
            sa.peer_addrs,
        )
    )


def _on_response(
    host: ExchangeHost,
    sa: IkeSa,
    msg: Message,
    payloads: tuple[Payload, ...],
    data: bytes,
    now: float,
) -> None:
    """The responder's IKE_AUTH answer: verify it (or tell the peer AUTHENTICATION_FAILED),
    follow a REDIRECT, else established, with the Child SA or its failure."""
    conn = sa.conn
    assert conn is not None and sa.suite is not None and sa.keys is not None
    idr = first(payloads, Identification, PayloadType.IDr)
    auth_p = first(payloads, Authentication)
    if not isinstance(auth_p, Authentication) or not isinstance(idr, Identification):
        err = error_notify(payloads)
        if err is not None and err.type == NotifyType.AUTHENTICATION_FAILED:
            host.stats.auth_failures += 1
        raise ProtocolError(
            notify_type(err.type) if err else NotifyType.INVALID_SYNTAX,
            "IKE_AUTH response without IDr/AUTH",
        )
    peer_id = (idr.id_type, idr.data)
    signed = auth.SignedData(sa.suite.prf, sa.init_response, sa.ni, sa.keys.sk_pr, idr.body)
    failure = auth.responder_auth_failure(conn, payloads, auth_p, peer_id, signed, now)
    if failure is not None:
        # §2.21.2: tell the peer, then forget the SA
        host.stats.auth_failures += 1
        host.send_request(
            sa,
            ExchangeType.INFORMATIONAL,
            [Notify(NotifyType.AUTHENTICATION_FAILED)],
            window.ignore_response,
            now,
        )
        raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, failure)
    sa.remote_id = peer_id
    moved = first_notify(payloads, NotifyType.REDIRECT)
    if moved is not None and redirect.on_auth_response(host, sa, moved, now):
        return  # RFC 5685 §6: the gateway authenticated and sent us elsewhere
    mobike.negotiate(host, sa, payloads)
    _established(host, sa, now)
    pending = sa.pending_child
    sa.pending_child = None
    assert pending is not None
    err = error_notify(payloads)
    if err is not None:
        host.spis.release(pending.spi_in)
        host.emit(
            ChildSaFailed(
                sa.uid, conn.name, pending.config.name, name_of(NotifyType, err.type), now
            )
        )
        return
    try:
        child_sa.accept_from_auth(host, sa, pending, payloads, now)
    except ProtocolError as exc:
        host.spis.release(pending.spi_in)
        host.emit(ChildSaFailed(sa.uid, conn.name, pending.config.name, exc.notify.name, now))
        # the responder installed it: delete it there (§1.4.1)
        host.send_request(
            sa,
            ExchangeType.INFORMATIONAL,
            [Delete(ProtocolId.ESP, 4, (pending.spi_in.to_bytes(4, "big"),))],
            window.ignore_response,
            now,
        )


def _id_for_address(text: str) -> tuple[int, bytes]:
    """Our identity when none is configured: the IKE SA's address (ID_IPV4/6_ADDR)."""
    a = ip(text)
    return (IdType.ID_IPV4_ADDR if a.version == 4 else IdType.ID_IPV6_ADDR), a.packed
