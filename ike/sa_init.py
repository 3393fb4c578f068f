"""The IKE_SA_INIT exchange (RFC 7296 §1.2), both roles: the first, unprotected round trip.

* Initiator: SA (our IKE proposals), KE (the first proposal's first DH group), Nonce,
  NAT_DETECTION_*, and what pubkey authentication (RFC 7427 §4), fragmentation (RFC
  7383) and redirect (RFC 5685) announce. A COOKIE or INVALID_KE_PAYLOAD answer is
  followed by a new request (at most 3 rounds; a group must be one of ours); a REDIRECT
  goes to ike/redirect.py. The answer gives the keys (SKEYSEED, §2.14), tells whether a
  NAT is on the path (then IKE floats to port 4500, also without a NAT when we offer
  MOBIKE to a peer that does NAT-T) and leads to IKE_AUTH (ike/ike_auth.py).
* Responder: stateless answers first (COOKIE once too many SAs are half-open,
  ike/cookies.py; REDIRECT by a `redirect_to` rule; NO_PROPOSAL_CHOSEN;
  INVALID_KE_PAYLOAD naming the group of our chosen proposal), else a half-open SA whose
  candidate connections are those whose addresses and proposals fit; IKE_AUTH picks
  one of them. A retransmitted request is answered from the cache by the engine.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ike import auth, codec, ike_auth, nat, redirect
from ike.codec import KeyExchange, Message, Nonce, Notify, Payload, Proposal, SecurityAssociation
from ike.config import CompiledConnection
from ike.constants import ExchangeType, NotifyType, name_of
from ike.crypto import DH_GROUPS
from ike.errors import DecodeError, ProtocolError
from ike.events import Endpoint, IkeSaRedirected
from ike.host import ExchangeHost
from ike.keys import derive_ike_sa_keys, skeyseed
from ike.payloads import error_notify, first, first_notify, notify_type
from ike.proposals import accept_ike, select_ike
from ike.sa import ZERO_SPI, IkeSa, State
from ike.sk import SkCipher

_MAX_INIT_RETRIES = 3  # COOKIE / INVALID_KE_PAYLOAD rounds per IKE SA


def send_request(host: ExchangeHost, sa: IkeSa, now: float) -> None:
    """Our IKE_SA_INIT request (again after a COOKIE or INVALID_KE_PAYLOAD answer)."""
    assert sa.conn is not None and sa.dh is not None
    payloads: list[Payload] = []
    if sa.cookie:
        payloads.append(Notify(NotifyType.COOKIE, sa.cookie))  # first payload (§2.6)
    payloads += [
        SecurityAssociation(tuple(s.to_proposal(i + 1, b"") for i, s in enumerate(sa.conn.ike))),
        KeyExchange(sa.dh.group.id, sa.dh.public),
        Nonce(sa.ni),
        *nat.detection_notifies(sa.spi_i, ZERO_SPI, sa.local, sa.remote),
    ]
    payloads += auth.init_payloads(auth.uses_pubkey(sa.conn))
    if host.settings.fragmentation and sa.conn.config.fragmentation != "no":
        payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    payloads += redirect.init_payloads(sa)
    data = codec.encode_message(
        Message(sa.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, True, False, 0, tuple(payloads))
    )
    sa.init_request = data
    host.send_first(sa, data, _on_response, now)


def send_error(
    host: ExchangeHost, hdr: codec.Header, notify: Notify, local: Endpoint, remote: Endpoint
) -> None:
    """Stateless unprotected IKE_SA_INIT answer (COOKIE, INVALID_KE_PAYLOAD, errors)."""
    data = codec.encode_message(
        Message(hdr.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, False, True, 0, (notify,))
    )
    host.send_datagram(local, remote, data)


def respond(
    host: ExchangeHost,
    msg: Message,
    hdr: codec.Header,
    data: bytes,
    local: Endpoint,
    remote: Endpoint,
    now: float,
) -> IkeSa | None:
    """Our answer to a new IKE_SA_INIT request: a new half-open responder SA (for the
    engine to put in its tables), or None when answered statelessly (COOKIE,
    INVALID_KE_PAYLOAD, REDIRECT, an error)."""
    p = msg.payloads
    sa_p, ke, nonce = first(p, SecurityAssociation), first(p, KeyExchange), first(p, Nonce)
    if not (
        isinstance(sa_p, SecurityAssociation)
        and isinstance(ke, KeyExchange)
        and isinstance(nonce, Nonce)
    ):
        raise DecodeError("IKE_SA_INIT request without SA, KE or Nonce")
    # COOKIE (§2.6): once too many SAs are half-open, demand proof of the return address
    want = host.cookies.demand(p, nonce.data, remote, hdr.spi_i, now)
    if want is not None:
        host.stats.cookies_sent += 1
        send_error(host, hdr, Notify(NotifyType.COOKIE, want), local, remote)
        return None
    candidates = host.connections_for(local, remote)
    redirect_ok = redirect.peer_supports(p)
    rule = redirect.init_rule(candidates) if redirect_ok else None
    if rule is not None:  # RFC 5685 §4.2: stateless HDR(SPIi, 0), N(REDIRECT, GW, Ni)
        host.stats.redirects_sent += 1
        send_error(host, hdr, redirect.init_notify(rule, nonce.data), local, remote)
        gateway = rule.config.redirect_to
        host.emit(IkeSaRedirected(0, rule.name, False, "init", remote, gateway, now))
        return None
    try:
        answer, suite = select_ike([s for c in candidates for s in c.ike], sa_p.proposals, ke.group)
    except ProtocolError as exc:
        send_error(host, hdr, Notify(exc.notify), local, remote)
        return None
    if ke.group != suite.dh.id:
        send_error(
            host,
            hdr,
            Notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", suite.dh.id)),
            local,
            remote,
        )
        return None
    sa = IkeSa(host.new_uid(), False, local, remote)
    dh = suite.dh.generate(host.random)
    try:
        g_ir = dh.exchange(ke.data)
    except ProtocolError as exc:
        send_error(host, hdr, Notify(exc.notify), local, remote)
        return None
    if len(candidates) > 1:
        candidates = tuple(c for c in candidates if _accepts(c, answer))
    sa.candidates = candidates
    sa.redirect_peer = redirect_ok
    sa.spi_i = hdr.spi_i
    sa.spi_r = host.new_ike_spi()
    sa.suite, sa.dh, sa.ni = suite, dh, nonce.data
    sa.nr = host.random(host.settings.nonce_size)
    nat_d = _detect_nat(sa, p)
    sa.nat = bool(nat_d)
    out: list[Payload] = [
        SecurityAssociation((answer,)),
        KeyExchange(suite.dh.id, dh.public),
        Nonce(sa.nr),
    ]
    if nat_d is not None:  # the peer does NAT-T: answer with our hashes
        out += nat.detection_notifies(sa.spi_i, sa.spi_r, local, remote)
    # RFC 7427 §4 and the CAs we trust (CERTREQ, §1.2) when a candidate uses certificates
    sa.peer_hints = auth.peer_hints(p)
    if (
        host.settings.fragmentation
        and any(c.config.fragmentation != "no" for c in candidates)
        and first_notify(p, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
    ):
        sa.frag = True
        out.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    out += auth.init_payloads(
        any(auth.uses_pubkey(c) for c in candidates),
        [c.trust for c in candidates if c.trust is not None],
    )
    resp = codec.encode_message(
        Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, False, True, 0, tuple(out))
    )
    sa.init_request, sa.init_response = data, resp
    sa.last_response = (0, ExchangeType.IKE_SA_INIT, resp)
    sa.peer_next_id = 1
    _derive_keys(host, sa, g_ir)
    host.cookies.half_open.add(sa)
    host.set_expiry(sa, now + host.settings.half_open_timeout)
    host.send_datagram(local, remote, resp)
    return sa


def _detect_nat(sa: IkeSa, payloads: Sequence[Payload]) -> bool | None:
    """True if either side is behind a NAT (§2.23), False if not, None if the peer sent
    no NAT_DETECTION_* notifies. The peer's view comes from its hashes."""
    # the initiator's request carries SPIr = 0 in its hashes
    spi_r = sa.spi_r if sa.initiator else ZERO_SPI
    state = nat.nat_state(sa.spi_i, spi_r, sa.local, sa.remote, payloads)
    if state is None:
        return None
    sa.behind_nat = state[1]  # RFC 3948 §4: the side behind the NAT keeps it open
    return state[0]


def _derive_keys(host: ExchangeHost, sa: IkeSa, g_ir: bytes) -> None:
    assert sa.suite is not None
    seed = skeyseed(sa.suite.prf, sa.ni, sa.nr, g_ir)
    sa.keys = derive_ike_sa_keys(sa.suite, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r)
    sa.sk = SkCipher(sa.suite, sa.keys, initiator=sa.initiator, random=host.random)
    sa.dh = None  # the private value is no longer needed


def _on_response(
    host: ExchangeHost,
    sa: IkeSa,
    msg: Message,
    payloads: tuple[Payload, ...],
    data: bytes,
    now: float,
) -> None:
    """The responder's IKE_SA_INIT answer: a REDIRECT, a COOKIE or INVALID_KE_PAYLOAD to
    try again with (at most _MAX_INIT_RETRIES times), an error, or its SA, KE and Nonce:
    then the keys, NAT detection, and our IKE_AUTH request."""
    assert sa.conn is not None
    moved = first_notify(payloads, NotifyType.REDIRECT)
    if moved is not None:
        redirect.on_init_response(host, sa, moved, now)
        return
    cookie = first_notify(payloads, NotifyType.COOKIE)
    if cookie is not None:
        if sa.init_retries >= _MAX_INIT_RETRIES or not 1 <= len(cookie.data) <= 64:
            raise ProtocolError(NotifyType.COOKIE, "responder keeps demanding a cookie")
        sa.init_retries += 1
        sa.cookie = cookie.data
        send_request(host, sa, now)
        return
    invalid_ke = first_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
    if invalid_ke is not None:
        group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
        ours = {g.id for s in sa.conn.ike for g in s.dh}
        assert sa.dh is not None
        if group not in ours or group == sa.dh.group.id or sa.init_retries >= _MAX_INIT_RETRIES:
            raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD, "no common DH group")
        sa.init_retries += 1
        sa.dh = DH_GROUPS[group].generate(host.random)
        send_request(host, sa, now)
        return
    err = error_notify(payloads)
    if err is not None:
        raise ProtocolError(
            notify_type(err.type), f"responder answered {name_of(NotifyType, err.type)}"
        )
    sa_p, ke, nonce = (
        first(payloads, SecurityAssociation),
        first(payloads, KeyExchange),
        first(payloads, Nonce),
    )
    if (
        not (
            isinstance(sa_p, SecurityAssociation)
            and isinstance(ke, KeyExchange)
            and isinstance(nonce, Nonce)
        )
        or msg.spi_r == ZERO_SPI
    ):
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT response incomplete")
    suite = accept_ike(sa.conn.ike, sa_p)
    assert sa.dh is not None
    if ke.group != suite.dh.id or ke.group != sa.dh.group.id:
        raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD, "KE group differs from the proposal")
    g_ir = sa.dh.exchange(ke.data)
    # the responder SPI is now known: index the SA under our SPI only (unchanged)
    sa.spi_r = msg.spi_r
    sa.suite = suite
    sa.nr = nonce.data
    sa.init_response = data
    sa.peer_hints = auth.peer_hints(payloads)
    sa.frag = (
        host.settings.fragmentation
        and sa.conn.config.fragmentation != "no"
        and bool(first_notify(payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    )
    nat_d = _detect_nat(sa, payloads)
    sa.nat = bool(nat_d)
    _derive_keys(host, sa, g_ir)
    nat_t = host.settings.nat_t_port
    # float to port 4500 (RFC 7296 §2.23, RFC 3948), also without a NAT when we offer
    # MOBIKE to a peer that does NAT-T (RFC 4555 §3.3): a later move may meet one
    if sa.nat or (nat_d is not None and sa.conn.config.mobike):
        sa.local = (sa.local[0], nat_t)
        sa.remote = (sa.remote[0], nat_t)
    sa.move(State.AUTH_SENT)
    ike_auth.send_request(host, sa, now)


def _accepts(conn: CompiledConnection, answer: Proposal) -> bool:
    """Would this connection's IKE proposals have produced `answer`?"""
    try:
        accept_ike(conn.ike, SecurityAssociation((answer,)))
    except ProtocolError:
        return False
    return True
