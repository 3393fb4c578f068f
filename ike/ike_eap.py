"""EAP in IKE_AUTH (RFC 7296 §2.16), both roles, EAP-only authentication (RFC 5998) and
the relay of EAP to a RADIUS server; called by ike/ike_auth.py, which owns the exchange.

Theory of operation
-------------------
An initiator asks for EAP by leaving AUTH out of its first IKE_AUTH request. Then:

    I -> R  IDi, [IDr], SA, TSi, TSr, [CP(CFG_REQUEST)], [N(EAP_ONLY_AUTHENTICATION)]
    R -> I  IDr, [CERT], AUTH, EAP(Request)       (AUTH and CERT left out: EAP-only)
    I -> R  EAP(Response)                          ... as many rounds as the method needs
    R -> I  EAP(Success)
    I -> R  AUTH                                   prf(prf(MSK, "Key Pad for IKEv2"),
    R -> I  AUTH, SA, TSi, TSr, [CP(CFG_REPLY)]         RealMessage | Nonce | prf(SK_p, IDx'))

The responder keeps the first request's payloads (`EapRound.first`) for its last answer,
which makes the Child SA; the SA stays AUTH_WAIT (AUTH_SENT on the initiator) until
then, so the engine's dispatch does not change. A retransmitted request is answered from
the response cache (the message ID does that), never fed to the EAP state machine again.

Responder methods: eap-mschapv2 (the users' NT hashes from the EapSecrets hook) and
eap-tls (the connection's certificate and CAs) run here (ike/eap/); eap-radius hands
every EAP Response to the caller as an EapRadiusRequest event and raises ResponsePending:
the engine keeps the request unanswered until `IkeEngine.eap_relay_answer` brings the
server's answer (`RelayAnswer`). The EAP identity: swanctl's `eap_id` unset takes the IKE
identity (no EAP-Identity round; through RADIUS a synthetic Identity Response starts the
conversation), "%any" asks for it, any other value asks and requires that one.

EAP-only (RFC 5998): an initiator sends N(EAP_ONLY_AUTHENTICATION) to say it supports it
(strongSwan always does; it accepts EAP-only only where its config says the responder
authenticates with EAP). The responder leaves AUTH and CERT out when its own
`local_auth` is the method, one of RFC 5998 §4's safe ones (here eap-tls: mutual, makes
an MSK, no offline dictionary attack), and refuses a peer without support. Our client
accepts a missing AUTH only when its `remote_auth` is eap-tls; it takes EAP-Success only
from a method that authenticated the server (ike/eap/session.py), and the MSK's AUTH
binds the IKE SA to it.

Failures: the responder answers EAP-Failure with N(AUTHENTICATION_FAILED) (`Refused`
carries the reason for the log: never a password, hash or MSK); the initiator fails its
SA with the reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ike import auth, window
from ike.codec import Authentication, Eap, Identification, Notify, Payload
from ike.config import MUTUAL_EAP_METHODS, CompiledConnection, format_identity, parse_identity
from ike.constants import AuthMethod, ExchangeType, NotifyType, PayloadType
from ike.cp import VirtualIpAssignment
from ike.eap import packet as ep
from ike.eap.errors import EapDecodeError
from ike.eap.mschapv2 import MschapV2Peer, MschapV2Server
from ike.eap.packet import Code, EapType
from ike.eap.session import EapAuthenticator, EapPeer, PeerMethodFactory, Status
from ike.errors import LocalError, ProtocolError, ResponsePending
from ike.events import EapRadiusRequest
from ike.host import ExchangeHost
from ike.keys import psk_pad
from ike.payloads import error_notify, first, first_notify, notify_type
from ike.pki.names import same_identity
from ike.pki.x509 import id_in_certificate
from ike.sa import EapPhase, EapRound, IkeSa
from ike.window import ResponseHandler

if TYPE_CHECKING:
    from cryptography import x509

    from ike.eap.method import ServerMethod

ANY_EAP_ID = "%any"
_FAILURE = ep.encode_eap(ep.failure(0))  # when no Identifier is at hand


@dataclass(frozen=True, slots=True)
class RelayAnswer:
    """The RADIUS server's answer to one relayed EAP Response (`IkeEngine.eap_relay_answer`).

    Access-Challenge: `eap` is the next EAP Request. Access-Accept: `accepted`, `eap` the
    EAP-Success, `msk` from its MS-MPPE keys, `offered` what it named for the client
    (Framed-IP-Address, DNS). Access-Reject: neither, `eap` the EAP-Failure. No usable
    answer (timeout, bad authenticator): `error` says why ("RADIUS unreachable: ...")."""

    eap: bytes = b""
    accepted: bool = False
    done: bool = False  # Accept or Reject: the conversation is over
    msk: bytes | None = field(default=None, repr=False)
    offered: VirtualIpAssignment | None = None
    method: str = ""  # the EAP method the server ran, for the log (e.g. "PEAP")
    error: str = ""


class Refused(Exception):
    """The responder's EAP authentication failed: answer EAP-Failure (`eap`) and
    N(AUTHENTICATION_FAILED). str() is the reason for the log (no secrets)."""

    def __init__(self, reason: str, eap: bytes) -> None:
        super().__init__(reason)
        self.eap = eap


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The MSK's AUTH verified (responder): our answer starts with `payloads` (our AUTH)
    and the exchange goes on with `request`, the first request's payloads."""

    payloads: list[Payload]
    request: tuple[Payload, ...]


# --------------------------------------------------------------------------- shared


def method_name(conn: CompiledConnection, eap_round: EapRound) -> str:
    """The method for the log and list-sas: ours, or eap-radius/<what the server ran>."""
    if eap_round.relay:
        return "eap-radius"
    return conn.config.remote_auth if not eap_round.peer else conn.config.local_auth


def _msk_auth(sa: IkeSa, msk: bytes, *, ours: bool, real: bytes, nonce: bytes, idb: bytes) -> bytes:
    """prf(prf(MSK, "Key Pad for IKEv2"), RealMessage | Nonce | prf(SK_p, IDx')) (§2.16):
    the PSK AUTH with the MSK as the shared secret; `ours` picks our SK_p."""
    assert sa.suite is not None and sa.keys is not None
    prf = sa.suite.prf
    sk_p = sa.keys.sk_pi if sa.initiator == ours else sa.keys.sk_pr
    return auth.SignedData(prf, real, nonce, sk_p, idb).psk_mac(psk_pad(prf, msk))


def _identity_text(identity: bytes) -> str:
    return identity.decode("utf-8", "replace")


def _cert_names(identity: bytes) -> Callable[[x509.Certificate], bool]:
    """An EAP-TLS certificate check: the certificate names this identity (RFC 4945 §3.1:
    a DN as subject, else a subjectAltName of the identity's kind)."""
    try:
        id_type, data = parse_identity(_identity_text(identity))
    except LocalError:
        return lambda cert: False
    return lambda cert: id_in_certificate(id_type, data, cert)


# --------------------------------------------------------------------------- responder


def _server_methods(
    host: ExchangeHost, conn: CompiledConnection, now: float
) -> Mapping[int, Callable[[bytes], ServerMethod]]:
    if conn.config.remote_auth == "eap-tls":
        from ike.eap.tls import EapTlsServer

        tls = conn.eap_tls
        assert tls is not None  # compile_connection builds it for eap-tls
        return {
            EapType.TLS: lambda ident: EapTlsServer(tls, now=now, peer_check=_cert_names(ident))
        }
    secrets = host.eap_secrets

    def lookup(identity: bytes) -> bytes | None:
        return secrets.nt_hash(identity) if secrets is not None else None

    return {EapType.MSCHAPV2: lambda ident: MschapV2Server(ident, lookup, random=host.random)}


def start(
    host: ExchangeHost,
    sa: IkeSa,
    conn: CompiledConnection,
    request: tuple[Payload, ...],
    peer_id: bytes,
    own_id: bytes,
    head: list[Payload],
    now: float,
) -> list[Payload]:
    """The first IKE_AUTH request asked for EAP (no AUTH): our IDr [CERT, AUTH] (`head`)
    and the first EAP Request; or ResponsePending while the RADIUS server's first
    Request is awaited."""
    r = EapRound(own_id, peer_id)
    r.first = request
    # RFC 5998, as strongSwan: EAP-only when our own `local_auth` is the (mutual) method
    # and the initiator said it supports it; clients send the notify whatever they want
    r.eap_only = conn.config.local_auth in MUTUAL_EAP_METHODS
    if r.eap_only and first_notify(request, NotifyType.EAP_ONLY_AUTHENTICATION) is None:
        raise Refused("EAP-only authentication configured, but the peer does not support it", b"")
    if r.eap_only:  # the method is our proof; AUTH and CERT stay out
        head = [
            p
            for p in head
            if not isinstance(p, Authentication) and p.payload_type != PayloadType.CERT
        ]
    sa.eap = r
    eap_id = conn.config.remote_eap_id
    known = None if eap_id else format_identity(*sa.remote_id).encode()
    if conn.config.remote_auth == "eap-radius":
        r.relay = True
        if known is None:  # we ask for the identity; the server gets the peer's answer
            return [*head, Eap(ep.encode_eap(ep.request(host.random(1)[0], EapType.IDENTITY)))]
        r.identity = known
        r.held = head
        _relay(host, sa, ep.encode_eap(ep.response(0, EapType.IDENTITY, known)), True, now)
    r.local = EapAuthenticator(_server_methods(host, conn, now), identity=known, random=host.random)
    return [*head, Eap(r.local.start())]


def _relay(host: ExchangeHost, sa: IkeSa, data: bytes, opening: bool, now: float) -> None:
    """Hand an EAP Response to the caller for the RADIUS server: the answer waits."""
    r = sa.eap
    assert r is not None and r.identity is not None and sa.conn is not None
    r.move(EapPhase.RELAYING)
    host.stats.eap_relayed += 1
    host.emit(
        EapRadiusRequest(sa.uid, sa.conn.name, r.identity, data, sa.local, sa.remote, opening, now)
    )
    raise ResponsePending


def on_request(
    host: ExchangeHost, sa: IkeSa, payloads: tuple[Payload, ...], now: float
) -> list[Payload] | Authenticated:
    """A further IKE_AUTH request of an EAP round: the next EAP Request, EAP-Success or
    EAP-Failure (Refused); after EAP-Success its AUTH, checked (Authenticated)."""
    r = sa.eap
    assert r is not None and sa.conn is not None
    if r.phase is EapPhase.AUTH:
        return _check_msk_auth(host, sa, r, payloads)
    eap_p = first(payloads, Eap)
    if not isinstance(eap_p, Eap):
        raise Refused("IKE_AUTH request without EAP during the EAP exchange", b"")
    if r.relay:
        opening = r.identity is None
        if opening:  # the answer to our EAP-Identity Request
            r.identity = _identity_response(eap_p.data)
        _check_response(eap_p.data)
        _relay(host, sa, eap_p.data, opening, now)
    assert r.local is not None
    out = r.local.receive(eap_p.data)
    if r.local.status is Status.FAILURE:
        raise Refused(r.local.failure_reason or "EAP failed", out)
    if r.local.status is Status.SUCCESS:
        assert r.local.identity is not None
        _succeeded(host, sa, r, r.local.identity, r.local.msk, out)
    return [Eap(out)]


def _identity_response(data: bytes) -> bytes:
    """The identity in the peer's EAP-Identity Response (Refused unless it is one)."""
    try:
        pkt = ep.decode_eap(data)
    except EapDecodeError as exc:
        raise Refused(f"malformed EAP Response: {exc}", b"") from None
    if pkt.code != Code.RESPONSE or pkt.type != EapType.IDENTITY:
        raise Refused(
            "expected an EAP-Identity Response", ep.encode_eap(ep.failure(pkt.identifier))
        )
    identity = pkt.data.split(b"\x00", 1)[0]
    if not identity or len(identity) > 253:
        raise Refused("empty or overlong EAP identity", _failure(pkt.identifier))
    return identity


def _check_response(data: bytes) -> None:
    """Only well-formed EAP Responses go to the RADIUS server."""
    try:
        pkt = ep.decode_eap(data)
    except EapDecodeError as exc:
        raise Refused(f"malformed EAP Response: {exc}", b"") from None
    if pkt.code != Code.RESPONSE:
        raise Refused(
            f"expected an EAP Response, got Code {pkt.code}",
            ep.encode_eap(ep.failure(pkt.identifier)),
        )


def _succeeded(
    host: ExchangeHost, sa: IkeSa, r: EapRound, identity: bytes, msk: bytes | None, out: bytes
) -> None:
    """EAP-Success is going out: the identity must be the one configured, and an MSK
    must bind the IKE SA to the method (else the method could be relayed, §2.16)."""
    assert sa.conn is not None
    eap_id = sa.conn.config.remote_eap_id
    if eap_id and eap_id != ANY_EAP_ID and identity != eap_id.encode():
        raise Refused(
            f"EAP identity {_identity_text(identity)!r} is not {eap_id!r}", _failure_for(out)
        )
    if not msk:
        raise Refused("the EAP method made no MSK (RADIUS: no MS-MPPE keys)", _failure_for(out))
    r.msk = msk
    r.identity = identity
    sa.eap_identity = identity
    host.stats.eap_successes += 1
    r.move(EapPhase.AUTH)


def _failure(identifier: int) -> bytes:
    return ep.encode_eap(ep.failure(identifier))


def _failure_for(success: bytes) -> bytes:
    """EAP-Failure in place of a Success (same Identifier)."""
    try:
        return _failure(ep.decode_eap(success).identifier)
    except EapDecodeError:
        return _FAILURE


def _check_msk_auth(
    host: ExchangeHost, sa: IkeSa, r: EapRound, payloads: tuple[Payload, ...]
) -> Authenticated:
    auth_p = first(payloads, Authentication)
    if not isinstance(auth_p, Authentication):
        raise Refused("no AUTH after EAP-Success", b"")
    assert r.msk is not None
    want = _msk_auth(sa, r.msk, ours=False, real=sa.init_request, nonce=sa.nr, idb=r.peer_id)
    if auth_p.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE or not hmac.compare_digest(
        want, auth_p.data
    ):
        raise Refused("the AUTH made from the EAP MSK does not verify", b"")
    mine = _msk_auth(sa, r.msk, ours=True, real=sa.init_response, nonce=sa.ni, idb=r.own_id)
    return Authenticated(
        [Authentication(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, mine)], r.first + payloads
    )


def relay_answer(host: ExchangeHost, sa: IkeSa, answer: RelayAnswer, now: float) -> list[Payload]:
    """The RADIUS server's answer to the Response we relayed: the IKE_AUTH answer."""
    r = sa.eap
    if r is None or r.phase is not EapPhase.RELAYING:
        raise LocalError(f"IKE SA {sa.uid} is not waiting for a RADIUS answer")
    r.move(EapPhase.METHOD)
    head, r.held = r.held, []
    identity = _identity_text(r.identity or b"")
    if answer.error:
        raise Refused(f"RADIUS: {answer.error}", answer.eap or _FAILURE)
    if not answer.done:
        if not answer.eap:
            raise Refused(
                "RADIUS Access-Challenge without an EAP Request", ep.encode_eap(ep.failure(0))
            )
        return [*head, Eap(answer.eap)]
    if not answer.accepted:
        raise Refused(
            f"the RADIUS server rejected {identity!r}", answer.eap or ep.encode_eap(ep.failure(0))
        )
    r.offered = answer.offered
    success = answer.eap or ep.encode_eap(ep.success(0))
    assert r.identity is not None
    _succeeded(host, sa, r, r.identity, answer.msk, success)
    return [*head, Eap(success)]


# --------------------------------------------------------------------------- initiator


def start_peer(
    host: ExchangeHost, sa: IkeSa, conn: CompiledConnection, own_id: bytes, now: float
) -> list[Payload]:
    """Our first IKE_AUTH request authenticates with EAP: no AUTH; N(EAP_ONLY_
    AUTHENTICATION) when the responder is to prove itself with the method alone."""
    identity = (conn.config.local_eap_id or format_identity(*sa.local_id)).encode()
    methods: dict[int, PeerMethodFactory]
    if conn.config.local_auth == "eap-tls":
        from ike.eap.tls import EapTlsPeer

        tls = conn.eap_tls
        assert tls is not None
        want = conn.remote_id
        check = (lambda cert: id_in_certificate(want[0], want[1], cert)) if want else None
        methods = {EapType.TLS: lambda: EapTlsPeer(tls, now=now, server_check=check)}
    else:
        nt = host.eap_secrets.nt_hash(identity) if host.eap_secrets is not None else None
        if nt is None:
            raise ProtocolError(
                NotifyType.AUTHENTICATION_FAILED,
                f"no EAP secret for our identity {_identity_text(identity)!r}",
            )
        methods = {EapType.MSCHAPV2: lambda: MschapV2Peer(identity, nt, random=host.random)}
    r = EapRound(own_id)
    r.peer = EapPeer(identity, methods)
    r.identity = identity
    r.eap_only = conn.remote_eap
    sa.eap = r
    return [Notify(NotifyType.EAP_ONLY_AUTHENTICATION)] if r.eap_only else []


def on_response(
    host: ExchangeHost,
    sa: IkeSa,
    payloads: tuple[Payload, ...],
    handler: ResponseHandler,
    now: float,
) -> bool:
    """An IKE_AUTH answer during our EAP authentication. True: the last one (its AUTH
    from the MSK verified): the caller goes on as with any IKE_AUTH answer. False: our
    next request is sent (EAP Response, or our AUTH from the MSK)."""
    r = sa.eap
    conn = sa.conn
    assert r is not None and r.peer is not None and conn is not None
    assert sa.suite is not None and sa.keys is not None
    if not r.peer_id:  # the first answer: IDr, [CERT,] [AUTH,] EAP
        _check_responder(host, sa, r, conn, payloads, now)
    if r.phase is EapPhase.AUTH:
        auth_p = first(payloads, Authentication)
        if not isinstance(auth_p, Authentication):
            _refused(host, payloads, "IKE_AUTH answer without AUTH after EAP-Success")
        assert r.msk is not None
        want = _msk_auth(sa, r.msk, ours=False, real=sa.init_response, nonce=sa.ni, idb=r.peer_id)
        if not hmac.compare_digest(want, auth_p.data):  # type: ignore[union-attr]
            tell_auth_failed(host, sa, now)
            raise ProtocolError(
                NotifyType.AUTHENTICATION_FAILED,
                "the responder's AUTH from the EAP MSK does not verify",
            )
        sa.eap_identity = r.identity or b""
        return True
    eap_p = first(payloads, Eap)
    if not isinstance(eap_p, Eap):
        _refused(host, payloads, "IKE_AUTH answer without EAP")
    out = r.peer.receive(eap_p.data)  # type: ignore[union-attr]
    if r.peer.status is Status.FAILURE:
        host.stats.auth_failures += 1
        host.stats.eap_failures += 1
        raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, f"EAP: {r.peer.failure_reason}")
    if r.peer.status is Status.SUCCESS:
        if not r.peer.msk:
            raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, "the EAP method made no MSK")
        r.msk = r.peer.msk
        host.stats.eap_successes += 1
        r.move(EapPhase.AUTH)
        mine = _msk_auth(sa, r.msk, ours=True, real=sa.init_request, nonce=sa.nr, idb=r.own_id)
        reply: list[Payload] = [Authentication(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, mine)]
    else:
        assert out is not None
        reply = [Eap(out)]
    host.send_request(sa, ExchangeType.IKE_AUTH, reply, handler, now)
    return False


def _check_responder(
    host: ExchangeHost,
    sa: IkeSa,
    r: EapRound,
    conn: CompiledConnection,
    payloads: tuple[Payload, ...],
    now: float,
) -> None:
    """The first answer: the responder's identity, and its AUTH unless EAP-only."""
    assert sa.suite is not None and sa.keys is not None
    idr = first(payloads, Identification, PayloadType.IDr)
    if not isinstance(idr, Identification):
        _refused(host, payloads, "IKE_AUTH answer without IDr")
    assert isinstance(idr, Identification)
    peer_id = (idr.id_type, idr.data)
    auth_p = first(payloads, Authentication)
    if auth_p is None and not r.eap_only:
        _refused(host, payloads, "the responder sent no AUTH (and we did not ask for EAP-only)")
    failure = None
    if conn.remote_id is not None and not same_identity(conn.remote_id, peer_id):
        failure = f"responder's identity is not {conn.config.remote_id!r}"
    elif isinstance(auth_p, Authentication):
        signed = auth.SignedData(sa.suite.prf, sa.init_response, sa.ni, sa.keys.sk_pr, idr.body)
        failure = auth.responder_auth_failure(conn, payloads, auth_p, peer_id, signed, now)
    if failure is not None:
        host.stats.auth_failures += 1
        tell_auth_failed(host, sa, now)
        raise ProtocolError(NotifyType.AUTHENTICATION_FAILED, failure)
    r.peer_id = idr.body
    sa.remote_id = peer_id


def _refused(host: ExchangeHost, payloads: tuple[Payload, ...], what: str) -> None:
    """The answer is not what EAP needs: the responder's error NOTIFY, if it sent one."""
    err = error_notify(payloads)
    if err is not None and err.type == NotifyType.AUTHENTICATION_FAILED:
        host.stats.auth_failures += 1
        eap_p = first(payloads, Eap)
        if isinstance(eap_p, Eap):
            host.stats.eap_failures += 1
    raise ProtocolError(notify_type(err.type) if err else NotifyType.INVALID_SYNTAX, what)


def tell_auth_failed(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """§2.21.2: the responder is told in an INFORMATIONAL; then the SA is forgotten."""
    host.send_request(
        sa,
        ExchangeType.INFORMATIONAL,
        [Notify(NotifyType.AUTHENTICATION_FAILED)],
        window.ignore_response,
        now,
    )
