"""IKEv2 redirect (RFC 5685): a gateway hands its peers to another gateway.

The engine hands this module a small interface (ike/host.py's SaHost) and calls its
hooks; what redirect decides is here.

Notify data (§8.1, §8.2): GW Ident Type (1 IPv4, 2 IPv6, 3 FQDN), GW Ident Len, the
gateway identity, then (REDIRECT in IKE_SA_INIT only) the initiator's nonce Ni.

* Initiator (the client). A connection with `follow_redirects` (default on, as
  strongSwan) sends REDIRECT_SUPPORTED in IKE_SA_INIT (§4.1), or REDIRECTED_FROM naming
  the gateway that redirected it, which implies the support (§4.2). It follows a REDIRECT
  - in the IKE_SA_INIT response (§4.2): only if its nonce data is our Ni; one that is
    not (an off-path forgery) is ignored as if it never came: the request keeps being
    retransmitted and the real answer still counts;
  - in the IKE_AUTH response, once the gateway's AUTH verified (§6): the IKE SA at the
    old gateway is deleted (INFORMATIONAL Delete, no events: it never was established);
  - in an INFORMATIONAL request on an established IKE SA (§5): answered, then the SA
    and its Child SAs end (ChildSaDeleted/IkeSaDeleted "redirected") and are deleted at
    the old gateway.
  Following means a new IKE SA (new handle, `IkeSaRedirected.new_ike_sa`) to the new
  gateway's address on the connection's remote port, with the same first Child config.
  At most MAX_REDIRECTS redirects within REDIRECT_LOOP_PERIOD per chain of attempts
  (strongSwan's limit): the next one fails the attempt ("REDIRECT_LOOP"; an established
  SA just stays). A gateway named by FQDN is not followed (the engine does no name
  resolution): the attempt fails with a reason that says so, an established SA stays.
* Responder (the gateway): a connection with `redirect_to` redirects every peer that
  announced support: in IKE_SA_INIT (`redirect_on = "init"`, stateless: the answer is
  HDR(SPIi, 0), N(REDIRECT, gateway, Ni); the first candidate connection, by address,
  with such a rule decides) or in IKE_AUTH after authenticating the peer
  (`redirect_on = "auth"`: IDr, [CERT], AUTH, N(REDIRECT) and no Child SA; the IKE SA
  waits for the peer's Delete, without events). `IkeEngine.redirect_ike_sa` moves an
  established peer with an INFORMATIONAL request (§5). IkeSaRedirected reports each.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from ike.codec import Message, Notify, Payload
from ike.config import check_gateway
from ike.constants import ExchangeType, NotifyType
from ike.errors import LocalError, ProtocolError, ResponseIgnored
from ike.events import IkeSaRedirected
from ike.sa import After, EndReason, IkeSa

if TYPE_CHECKING:
    from ike.config import CompiledConnection
    from ike.host import SaHost

GW_IPV4, GW_IPV6, GW_FQDN = 1, 2, 3  # RFC 5685 §8.1
MAX_REDIRECTS = 5  # redirects followed within REDIRECT_LOOP_PERIOD (strongSwan's limit)
REDIRECT_LOOP_PERIOD = 300.0


def encode_gateway(gateway: str, nonce: bytes = b"") -> bytes:
    """REDIRECT / REDIRECTED_FROM notify data (§8.1, §8.2)."""
    try:
        ip = ipaddress.ip_address(gateway)
    except ValueError:
        ident, kind = gateway.encode("ascii"), GW_FQDN
    else:
        ident, kind = ip.packed, (GW_IPV4 if ip.version == 4 else GW_IPV6)
    return bytes((kind, len(ident))) + ident + nonce


def decode_gateway(data: bytes) -> tuple[str, bytes]:
    """(gateway identity as text, the nonce data after it); ProtocolError if malformed."""
    if len(data) < 2 or len(data) < 2 + data[1]:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "REDIRECT data too short")
    kind, ident, rest = data[0], data[2 : 2 + data[1]], data[2 + data[1] :]
    if kind == GW_IPV4 and len(ident) == 4 or kind == GW_IPV6 and len(ident) == 16:
        return str(ipaddress.ip_address(ident)), rest
    if kind == GW_FQDN:
        try:
            return check_gateway(ident.decode("ascii")), rest
        except (UnicodeDecodeError, LocalError):
            pass
    raise ProtocolError(NotifyType.INVALID_SYNTAX, f"REDIRECT gateway type {kind} malformed")


# --------------------------------------------------------------------------- initiator


def init_payloads(sa: IkeSa) -> list[Payload]:
    """Our IKE_SA_INIT request's redirect notify (§4.1/§4.2), if we follow redirects."""
    assert sa.conn is not None
    if sa.redirected_from is not None:
        sa.redirect_self = True
        return [Notify(NotifyType.REDIRECTED_FROM, encode_gateway(sa.redirected_from[0]))]
    if sa.conn.config.follow_redirects:
        sa.redirect_self = True
        return [Notify(NotifyType.REDIRECT_SUPPORTED)]
    return []


def on_init_response(host: SaHost, sa: IkeSa, notify: Notify, now: float) -> None:
    """A REDIRECT answering our IKE_SA_INIT: follow it if it carries our Ni (§4.2)."""
    try:
        gateway, nonce = decode_gateway(notify.data) if sa.redirect_self else ("", b"")
    except ProtocolError:  # unauthenticated: as harmless as a wrong nonce
        gateway, nonce = "", b""
    if not sa.redirect_self or not nonce or nonce != sa.ni:
        host.stats.redirects_ignored += 1
        raise ResponseIgnored("REDIRECT without our nonce (or unasked for)")
    follow(host, sa, gateway, "init", now)


def on_auth_response(host: SaHost, sa: IkeSa, notify: Notify, now: float) -> bool:
    """A REDIRECT in the (authenticated) IKE_AUTH response (§6): True when handled."""
    if not sa.redirect_self:
        return False
    gateway, rest = decode_gateway(notify.data)
    if rest:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "REDIRECT in IKE_AUTH with nonce data")
    follow(host, sa, gateway, "auth", now)
    return True


def on_informational(host: SaHost, sa: IkeSa, notify: Notify, now: float) -> None:
    """A REDIRECT in an INFORMATIONAL request on an established IKE SA (§5): answered
    first, then followed (our Delete must not overtake the answer)."""
    if not sa.redirect_self:
        host.stats.redirects_ignored += 1
        return
    gateway, rest = decode_gateway(notify.data)
    if rest:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "REDIRECT in INFORMATIONAL with a nonce")
    host.after_response(lambda: follow(host, sa, gateway, "established", now))


def follow(host: SaHost, sa: IkeSa, gateway: str, phase: str, now: float) -> None:
    """Leave this gateway for `gateway`: a new IKE SA there, this one abandoned."""
    conn = sa.conn
    assert conn is not None
    history = tuple(
        t
        for t in (sa.redirected_from[1] if sa.redirected_from else ())
        if now - t < REDIRECT_LOOP_PERIOD
    )
    why = ""
    loop = len(history) >= MAX_REDIRECTS
    if loop:
        why = f"{len(history)} redirects within {REDIRECT_LOOP_PERIOD:g} s, the last to {gateway}"
    local = _local_for(conn, sa, gateway) if not why else None
    if not why and local is None:
        why = (
            f"gateway {gateway} is a name (no name resolution in the engine)"
            if encode_gateway(gateway)[0] == GW_FQDN
            else f"no local address of the family of gateway {gateway}"
        )
    if why:
        host.stats.redirects_ignored += 1
        if phase == "established":  # the SA stays with the current gateway
            return
        reason = EndReason.REDIRECT_LOOP if loop else EndReason.REDIRECT
        # after IKE_AUTH the gateway holds an SA: Delete it there
        host.end_sa(
            sa, reason, now, detail=why, after=After.DELETE if phase == "auth" else After.REMOVE
        )
        return
    assert local is not None
    child = sa.pending_child.config if sa.pending_child is not None else None
    if child is None:
        child = next((c.config for c in sa.children.values()), None) or conn.child(None)
    old_remote = sa.remote
    # Child SAs and an established IKE SA end with events (a half-made one silently:
    # IkeSaRedirected tells it); the old gateway is told unless it never made an SA
    host.end_sa(
        sa, EndReason.REDIRECTED, now, after=After.REMOVE if phase == "init" else After.DELETE
    )
    new = host.start_initiator(
        conn,
        child,
        (local, conn.config.local_port),
        (gateway, conn.config.remote_port),
        now,
        redirected_from=(old_remote[0], (*history, now)),
    )
    host.stats.redirects_followed += 1
    host.emit(IkeSaRedirected(sa.uid, conn.name, True, phase, old_remote, gateway, now, new.uid))


def _local_for(conn: CompiledConnection, sa: IkeSa, gateway: str) -> str | None:
    """Our address towards the new gateway: the current one if the family matches, else
    the connection's first local address of that family (None for an FQDN gateway)."""
    version = {GW_IPV4: 4, GW_IPV6: 6}.get(encode_gateway(gateway)[0])
    if version is None:
        return None
    if ipaddress.ip_address(sa.local[0]).version == version:
        return sa.local[0]
    return next((str(a) for a in conn.local_addrs if a.version == version), None)


# --------------------------------------------------------------------------- responder


def peer_supports(payloads: tuple[Payload, ...] | list[Payload]) -> bool:
    """The initiator announced redirect support (REDIRECT_SUPPORTED or REDIRECTED_FROM)."""
    return any(
        type(p) is Notify and p.type in (NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM)
        for p in payloads
    )


def init_rule(candidates: tuple[CompiledConnection, ...]) -> CompiledConnection | None:
    """The connection whose rule redirects this IKE_SA_INIT, if any (first candidate)."""
    return next(
        (c for c in candidates if c.config.redirect_to and c.config.redirect_on == "init"), None
    )


def init_notify(conn: CompiledConnection, ni: bytes) -> Notify:
    return Notify(NotifyType.REDIRECT, encode_gateway(conn.config.redirect_to, ni))


def auth_notify(conn: CompiledConnection) -> Notify | None:
    """REDIRECT for our IKE_AUTH answer when the matched connection redirects there."""
    c = conn.config
    if c.redirect_to and c.redirect_on == "auth":
        return Notify(NotifyType.REDIRECT, encode_gateway(c.redirect_to))
    return None


def start(host: SaHost, sa: IkeSa, gateway: str, now: float) -> None:
    """Send an established peer to `gateway` (§5); IkeSaRedirected once it answered."""
    if not sa.redirect_peer:
        raise LocalError(f"IKE SA {sa.uid}: the peer did not announce REDIRECT_SUPPORTED")
    try:
        gateway = check_gateway(gateway)
    except LocalError as exc:
        raise LocalError(f"redirect: {exc}") from None
    old_remote = sa.remote

    def on_response(
        h: SaHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        h.stats.redirects_sent += 1
        h.emit(IkeSaRedirected(s.uid, s.name, False, "established", old_remote, gateway, n))

    host.send_request(
        sa,
        ExchangeType.INFORMATIONAL,
        [Notify(NotifyType.REDIRECT, encode_gateway(gateway))],
        on_response,
        now,
    )
