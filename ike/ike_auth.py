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

* EAP (§2.16, ike/ike_eap.py): the initiator leaves AUTH out of its first request; the
  responder stays AUTH_WAIT through the EAP rounds, so the engine keeps dispatching each
  further IKE_AUTH request to `on_request` (the initiator's `_on_response` sends the next
  request instead of finishing). An answer the RADIUS server must give first waits
  (ResponsePending); `relay_answer` then makes it.
* Virtual IPs (§2.19, §3.15): the responder hands out an address from the connection's
  pools (the AddressAssigner hook) for a CFG_REQUEST, in its last answer, and the Child
  SA's TSi is narrowed to it; no address: N(INTERNAL_ADDRESS_FAILURE) instead of the
  Child SA. The initiator asks with CFG_REQUEST for its `vips` and proposes TSi 0.0.0.0/0
  (::/0) for them; the CFG_REPLY's addresses are its own.
* Reauthentication (§2.8.3, ike/reauth.py): a responder with `reauth_time` announces it
  (AUTH_LIFETIME, RFC 4478) and looks for the SA of the same peer that the new one may
  replace; an initiator's new SA takes over its predecessor's Child SAs.
"""

from __future__ import annotations

from ike import auth, child_sa, cp, ike_eap, lifetimes, mobike, reauth, redirect, window
from ike.codec import (
    Authentication,
    Configuration,
    Delete,
    Eap,
    Identification,
    Message,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelectors,
)
from ike.config import CompiledConnection, format_identity
from ike.constants import ExchangeType, IdType, NotifyType, PayloadType, ProtocolId, name_of
from ike.cp import VirtualIpAssignment
from ike.errors import ProtocolError, SpiExhausted
from ike.events import ChildSaFailed, IkeSaEstablished, IkeSaRedirected
from ike.host import ExchangeHost
from ike.ike_eap import RelayAnswer
from ike.payloads import error_notify, first, first_notify, notify_type
from ike.pki.names import same_identity
from ike.sa import After, EndReason, IkeSa, Mobility, PendingChild, State, Succession
from ike.ts import any_address, ip, ts_for_address


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
    if conn.local_eap:  # no AUTH: we ask for EAP (§2.16)
        payloads += ike_eap.start_peer(host, sa, conn, idi.body, now)
    else:
        signed = auth.SignedData(sa.suite.prf, sa.init_request, sa.nr, sa.keys.sk_pi, idi.body)
        payloads.append(auth.make_auth(conn, sa.peer_hints, signed))
    if conn.vips:  # CFG_REQUEST (§2.19): again for the ones we hold when reauthenticating
        payloads.append(_vip_request(sa, conn))
    ch = sa.pending_child.config
    try:
        spi_in = host.spis.allocate()
    except SpiExhausted:
        raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "no inbound SPI left") from None
    # the triggering packet's selectors first, if any (§2.9); asking for a virtual IP,
    # "dynamic" is any address of its family: the responder narrows it to ours
    dynamic = (
        tuple(any_address(v.version) for v in conn.vips)
        if conn.vips
        else (ts_for_address(ip(sa.local[0])),)
    )
    tsi = sa.pending_child.tsi + (ch.local_ts or dynamic)
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
    connection, verify the peer (or run EAP with it), answer with ours and the Child SA
    (or a REDIRECT)."""
    assert sa.suite is not None and sa.keys is not None
    if sa.eap is not None:  # a further round of EAP
        try:
            step = ike_eap.on_request(host, sa, payloads, now)
        except ike_eap.Refused as exc:
            return _eap_failed(host, sa, exc, now)
        if isinstance(step, list):
            return step
        assert sa.conn is not None
        return _finish(host, sa, sa.conn, step.request, step.payloads, now)
    idi = first(payloads, Identification, PayloadType.IDi)
    idr = first(payloads, Identification, PayloadType.IDr)
    auth_p = first(payloads, Authentication)
    if not isinstance(idi, Identification):
        return _failed(host, sa, "IKE_AUTH without IDi", now)
    peer_id = (idi.id_type, idi.data)
    # IDr is a hint (§2.5 / strongSwan): prefer a connection with that local ID, else
    # any connection that accepts the peer's ID and AUTH method (PSK or signature), or
    # EAP when the request has no AUTH (§2.16)
    if isinstance(auth_p, Authentication):
        method = auth_p.method
        by_idi = [c for c in _by_identity(sa, peer_id) if auth.accepts_method(c, method)]
    else:
        by_idi = [c for c in _by_identity(sa, peer_id) if c.remote_eap]
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
        what = "AUTH method" if isinstance(auth_p, Authentication) else "request for EAP"
        return _failed(host, sa, f"no connection matches the peer's identity and {what}", now)
    if isinstance(auth_p, Authentication):
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
    if not isinstance(auth_p, Authentication):
        try:
            return ike_eap.start(host, sa, conn, payloads, idi.body, my_id.body, out, now)
        except ike_eap.Refused as exc:
            return _eap_failed(host, sa, exc, now)
    return _finish(host, sa, conn, payloads, out, now)


def relay_answer(host: ExchangeHost, sa: IkeSa, answer: RelayAnswer, now: float) -> list[Payload]:
    """The answer to the IKE_AUTH request whose EAP Response went to the RADIUS server
    (the engine's `eap_relay_answer`)."""
    try:
        return ike_eap.relay_answer(host, sa, answer, now)
    except ike_eap.Refused as exc:
        return _eap_failed(host, sa, exc, now)


def _by_identity(sa: IkeSa, peer_id: tuple[int, bytes]) -> list[CompiledConnection]:
    return [c for c in sa.candidates if c.remote_id is None or same_identity(c.remote_id, peer_id)]


def _finish(
    host: ExchangeHost,
    sa: IkeSa,
    conn: CompiledConnection,
    request: tuple[Payload, ...],
    out: list[Payload],
    now: float,
) -> list[Payload]:
    """The peer is authenticated: our last answer (`out` holds our IDr/AUTH, or the
    MSK's AUTH after EAP): a REDIRECT, or MOBIKE, the virtual IP and the Child SA from
    the request's payloads (after EAP: those of its first request)."""
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
    mobike.negotiate(host, sa, request)
    if sa.mobility is not Mobility.FIXED:  # MOBIKE in use
        out += mobike.auth_payloads(conn, sa.local)
    cp_reply, no_address = _assign_vips(host, sa, conn, request)
    out += cp_reply
    out += reauth.responder_payloads(conn)
    sa.predecessor = host.same_peer(sa)  # a reauthentication's new SA? (ike/reauth.py)
    _established(host, sa, now)
    sa_p = first(request, SecurityAssociation)
    if isinstance(sa_p, SecurityAssociation):
        if no_address:  # §3.10.1: no Child SA without the address it would carry
            host.emit(ChildSaFailed(sa.uid, conn.name, "", "INTERNAL_ADDRESS_FAILURE", now))
            out.append(Notify(NotifyType.INTERNAL_ADDRESS_FAILURE))
        else:
            out += child_sa.respond_in_auth(host, sa, conn, sa_p, request, now)
    reauth.responder_settled(sa)
    return out


def _assign_vips(
    host: ExchangeHost, sa: IkeSa, conn: CompiledConnection, request: tuple[Payload, ...]
) -> tuple[list[Payload], bool]:
    """A CFG_REQUEST for an address on a connection with pools: (our CFG_REPLY, False),
    or ([], True) when no pool had one. Without pools (or a request) nothing is said."""
    cp_p = first(request, Configuration)
    want = cp.read_request(cp_p) if isinstance(cp_p, Configuration) else None
    if want is None or not want.wants_address or not conn.config.pools:
        return [], False
    identity = sa.eap_identity.decode("utf-8", "replace") or format_identity(*sa.remote_id)
    offered = sa.eap.offered if sa.eap is not None else None
    got = VirtualIpAssignment()
    if host.addresses is not None:
        got = host.addresses.assign(sa.uid, conn.name, conn.config.pools, identity, want, offered)
    ip4 = got.ip4 if want.ip4 else None
    ip6 = got.ip6 if want.ip6 else None
    if ip4 is None and ip6 is None:
        host.stats.address_failures += 1
        return [], True
    dns = tuple(
        d for d in got.dns if (d.version == 4 and want.dns4) or (d.version == 6 and want.dns6)
    )
    sa.vips = VirtualIpAssignment(ip4, ip6, dns, got.subnets)
    return [cp.build_reply(sa.vips)], False


def _vip_request(sa: IkeSa, conn: CompiledConnection) -> Configuration:
    """Our CFG_REQUEST: a family of each `vips` entry; a concrete entry, or the address
    we hold (reauthentication), is asked for by value."""
    fams = {v.version for v in conn.vips}
    held = sa.predecessor.vips if sa.predecessor is not None else None
    want4 = next((v for v in conn.vips if v.version == 4 and not v.is_unspecified), None)
    want6 = next((v for v in conn.vips if v.version == 6 and not v.is_unspecified), None)
    if held is not None:
        want4 = held.ip4 or want4
        want6 = held.ip6.ip if held.ip6 is not None else want6
    return cp.build_request(
        ip4=4 in fams,
        ip6=6 in fams,
        current_ip4=want4,  # type: ignore[arg-type]
        current_ip6=want6,  # type: ignore[arg-type]
    )


def _failed(
    host: ExchangeHost, sa: IkeSa, why: str, now: float, conn: CompiledConnection | None = None
) -> list[Payload]:
    host.stats.auth_failures += 1
    # answered, then lingers for retransmits and goes
    host.end_sa(sa, EndReason.AUTHENTICATION_FAILED, now, detail=why, conn=conn, after=After.LINGER)
    raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, why)


def _eap_failed(host: ExchangeHost, sa: IkeSa, exc: ike_eap.Refused, now: float) -> list[Payload]:
    """EAP ended in failure: EAP-Failure (when the method made one) and
    N(AUTHENTICATION_FAILED); the SA lingers for retransmits and goes."""
    host.stats.auth_failures += 1
    host.stats.eap_failures += 1
    detail = _eap_detail(sa, str(exc))
    host.end_sa(sa, EndReason.AUTHENTICATION_FAILED, now, detail=detail, after=After.LINGER)
    out: list[Payload] = [Eap(exc.eap)] if exc.eap else []
    return [*out, Notify(NotifyType.AUTHENTICATION_FAILED)]


def _eap_detail(sa: IkeSa, reason: str) -> str:
    """The reason for the log, with the EAP identity it concerns (never a secret)."""
    r = sa.eap
    who = b""
    if r is not None:
        who = r.identity or (r.local.identity if r.local is not None else None) or b""
    name = who.decode("utf-8", "replace")
    return f"EAP identity {name!r}: {reason}" if name and repr(name) not in reason else reason


def on_informational(
    host: ExchangeHost,
    sa: IkeSa,
    msg: Message,
    payloads: tuple[Payload, ...],
    data: bytes,
    now: float,
) -> list[Payload]:
    """An INFORMATIONAL before IKE_AUTH is done (the engine's dispatch for AUTH_WAIT): an
    initiator that gives up authenticating says AUTHENTICATION_FAILED (§2.21.2; e.g. a
    strongSwan client whose EAP-MSCHAPv2 got a Failure sends it instead of acknowledging)."""
    if first_notify(payloads, NotifyType.AUTHENTICATION_FAILED) is None:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "INFORMATIONAL before IKE_AUTH is done")
    host.stats.auth_failures += 1
    reason = "the peer gave up authenticating (AUTHENTICATION_FAILED)"
    if sa.eap is not None:
        host.stats.eap_failures += 1
        pending = sa.eap.local.failure_pending if sa.eap.local is not None else None
        reason = _eap_detail(sa, f"{pending}; {reason}" if pending else reason)
    host.end_sa(
        sa, EndReason.AUTHENTICATION_FAILED, now, detail=reason, conn=sa.conn, after=After.LINGER
    )
    return []


def _established(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    assert sa.conn is not None and sa.suite is not None
    sa.move(State.ESTABLISHED)
    sa.established_at = now
    # only IKE_AUTH needed these (RealMessage1/2, connection choice): free the memory
    sa.init_request = sa.init_response = b""
    sa.peer_hints = None
    sa.candidates = ()
    method = ike_eap.method_name(sa.conn, sa.eap) if sa.eap is not None else ""
    sa.eap = None  # the MSK goes with it
    host.cookies.half_open.discard(sa)
    host.set_expiry(sa, None)
    lifetimes.start_ike(sa, host.settings, host.random, now)
    reauth.schedule(host, sa, now)
    host.lifetimes_changed(sa)
    host.stats.handshakes += 1
    v = sa.vips
    vips = tuple(str(a) for a in ((v.ip4, v.ip6.ip if v.ip6 else None) if v else ()) if a)
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
            eap_identity=sa.eap_identity.decode("utf-8", "replace"),
            eap_method=method,
            virtual_ips=vips,
            dns=tuple(str(d) for d in v.dns) if v else (),
            reauth_of=sa.predecessor.uid if sa.predecessor is not None else None,
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
    run EAP, follow a REDIRECT, else established, with the Child SA or its failure."""
    conn = sa.conn
    assert conn is not None and sa.suite is not None and sa.keys is not None
    if sa.eap is not None:
        r = sa.eap
        if not r.peer_id:
            r.first = payloads  # MOBIKE_SUPPORTED may come in the first answer
        if not ike_eap.on_response(host, sa, payloads, _on_response, now):
            return  # our next request is out
        payloads = r.first + payloads
    else:
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
            host.stats.auth_failures += 1
            ike_eap.tell_auth_failed(host, sa, now)
            raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, failure)
        sa.remote_id = peer_id
    moved = first_notify(payloads, NotifyType.REDIRECT)
    if moved is not None and redirect.on_auth_response(host, sa, moved, now):
        return  # RFC 5685 §6: the gateway authenticated and sent us elsewhere
    mobike.negotiate(host, sa, payloads)
    cp_p = first(payloads, Configuration)
    got = cp.read_reply(cp_p) if isinstance(cp_p, Configuration) and conn.vips else None
    if got is not None and (got.ip4 is not None or got.ip6 is not None):
        sa.vips = got
    reauth.on_auth_lifetime(host, sa, payloads, now)
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
    # a reauthentication's new SA: the old SA's other Child SAs come over next
    for old_child in reauth.leftover_children(sa):
        child_sa.start_create(host, sa, old_child.config, None, now)
    reauth.progress(host, sa, now)


def _id_for_address(text: str) -> tuple[int, bytes]:
    """Our identity when none is configured: the IKE SA's address (ID_IPV4/6_ADDR)."""
    a = ip(text)
    return (IdType.ID_IPV4_ADDR if a.version == 4 else IdType.ID_IPV6_ADDR), a.packed
