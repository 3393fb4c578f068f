"""MOBIKE (RFC 4555): an IKE SA and its Child SAs move to new addresses.

The engine hands this module a small interface (ike/host.py's SaHost) and calls its
hooks; everything MOBIKE decides is here:

* IKE_AUTH (§3.3, §3.4): both roles add MOBIKE_SUPPORTED when the connection has
  `mobike` on, plus ADDITIONAL_IP4/6_ADDRESS for the connection's other concrete local
  addresses. MOBIKE is in use when both sides sent MOBIKE_SUPPORTED. The initiator moves
  to the NAT-T port with IKE_AUTH whenever the peer does NAT-T (§3.3; strongSwan does the
  same), so a later NAT on the path needs no port change; ESP is encapsulated only when
  a NAT is actually detected.
* Once MOBIKE is in use the addresses of the IKE SA change only through
  UPDATE_SA_ADDRESSES, never because a message arrived from elsewhere (§3.8); responses
  still go back to where their request came from (RFC 7296 §2.11). NAT_DETECTION
  notifies in any INFORMATIONAL request are answered with ours (§3.8).
* The original initiator moves the SA (`start_update`, §3.5): the IKE SA switches to the
  new path at once (so the request and every retransmission use it), and an INFORMATIONAL
  request carries UPDATE_SA_ADDRESSES, fresh NAT_DETECTION_SOURCE/DESTINATION_IP hashes,
  a random COOKIE2 (§3.7, §4.2.5: 8..64 unpredictable octets), our other addresses (or
  NO_ADDITIONAL_ADDRESSES) and, if configured, NO_NATS_ALLOWED (§3.9). The answer must
  echo the COOKIE2; if it does not, the IKE SA is closed (§3.7). A good answer redoes
  NAT detection and emits IkeSaMigrated; an error answer (UNACCEPTABLE_ADDRESSES,
  UNEXPECTED_NAT_DETECTED, ...) puts the IKE SA back on its old path and emits
  IkeSaMigrateFailed. A move while an update is under way queues a new request (§3.6);
  the earlier one's answer then emits nothing.
* The responder (`on_informational`) takes the new addresses from the request's IP
  header, checks NO_NATS_ALLOWED against it (UNEXPECTED_NAT_DETECTED, §3.9) and refuses
  a remote address that the connection does not allow (concrete `remote_addrs`, unless
  the peer announced it as an additional address) with UNACCEPTABLE_ADDRESSES; otherwise
  it redoes NAT detection from the request's hashes, answers with its own hashes and the
  echoed COOKIE2 and emits IkeSaMigrated.
* ADDITIONAL_IP4/6_ADDRESS / NO_ADDITIONAL_ADDRESSES in IKE_AUTH or any INFORMATIONAL
  request replace the peer's address list (§3.6): AdditionalAddressesUpdated.

A malformed MOBIKE notify never raises out of the engine: a bad additional address is
skipped and counted (`stats.mobike_malformed`); a bad COOKIE2 or NO_NATS_ALLOWED in a
request is answered INVALID_SYNTAX (the message is authenticated, RFC 7296 §2.21.2).
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ike.codec import Message, Notify, Payload
from ike.constants import ExchangeType, NotifyType, name_of
from ike.errors import LocalError, ProtocolError
from ike.events import (
    AdditionalAddressesUpdated,
    Endpoint,
    IkeSaMigrated,
    IkeSaMigrateFailed,
)
from ike.nat import detection_notifies, nat_state
from ike.payloads import error_notify, first_notify, notifies
from ike.sa import EndReason, IkeSa, MobikeUpdate, Mobility

if TYPE_CHECKING:
    from ike.config import CompiledConnection
    from ike.host import SaHost

COOKIE2_SIZE = 16  # we send 16 random octets; a peer's may be 8..64 (RFC 4555 §4.2.5)
COOKIE2_MIN, COOKIE2_MAX = 8, 64
MAX_ADDITIONAL = 16  # peer addresses kept per IKE SA; more is noise, not multihoming

_NAT_DETECTION = frozenset(
    {NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP}
)
_MOBIKE_NOTIFIES = _NAT_DETECTION | {
    NotifyType.UPDATE_SA_ADDRESSES,
    NotifyType.ADDITIONAL_IP4_ADDRESS,
    NotifyType.ADDITIONAL_IP6_ADDRESS,
    NotifyType.NO_ADDITIONAL_ADDRESSES,
}


# --------------------------------------------------------------------------- payloads


def nat_notifies(sa: IkeSa, path: tuple[Endpoint, Endpoint] | None = None) -> list[Payload]:
    """NAT_DETECTION_SOURCE_IP (our end) and _DESTINATION_IP (the peer's) of the path
    (default: the IKE SA's)."""
    local, remote = path or (sa.local, sa.remote)
    return detection_notifies(sa.spi_i, sa.spi_r, local, remote)


def our_additional(conn: CompiledConnection, local: Endpoint) -> list[str]:
    """The connection's concrete local addresses other than the one in use (§3.4)."""
    current = ipaddress.ip_address(local[0])
    return [str(a) for a in conn.local_addrs if a != current]


def address_notifies(conn: CompiledConnection, local: Endpoint, *, say_none: bool) -> list[Payload]:
    out: list[Payload] = []
    for text in our_additional(conn, local):
        a = ipaddress.ip_address(text)
        kind = (
            NotifyType.ADDITIONAL_IP4_ADDRESS
            if a.version == 4
            else NotifyType.ADDITIONAL_IP6_ADDRESS
        )
        out.append(Notify(kind, a.packed))
    if not out and say_none:
        out.append(Notify(NotifyType.NO_ADDITIONAL_ADDRESSES))
    return out


def auth_payloads(conn: CompiledConnection, local: Endpoint) -> list[Payload]:
    """MOBIKE_SUPPORTED and our additional addresses for IKE_AUTH (§3.3, §3.4)."""
    if not conn.config.mobike:
        return []
    return [Notify(NotifyType.MOBIKE_SUPPORTED), *address_notifies(conn, local, say_none=False)]


def peer_additional(host: SaHost, sa: IkeSa, payloads: Sequence[Payload]) -> tuple[str, ...] | None:
    """The peer's address list from ADDITIONAL_* / NO_ADDITIONAL_ADDRESSES, None if the
    message says nothing about it. Malformed entries are skipped and counted."""
    seen = False
    addrs: list[str] = []
    for n in notifies(payloads):
        if n.type == NotifyType.NO_ADDITIONAL_ADDRESSES:
            seen = True
        elif n.type in (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.ADDITIONAL_IP6_ADDRESS):
            seen = True
            size = 4 if n.type == NotifyType.ADDITIONAL_IP4_ADDRESS else 16
            if len(n.data) != size:
                host.stats.mobike_malformed += 1
                continue
            text = str(ipaddress.ip_address(n.data))
            if text != sa.remote[0] and text not in addrs and len(addrs) < MAX_ADDITIONAL:
                addrs.append(text)
    return tuple(addrs) if seen else None


def negotiate(host: SaHost, sa: IkeSa, payloads: Sequence[Payload]) -> None:
    """After IKE_AUTH (either role): MOBIKE in use if both sides announced it."""
    assert sa.conn is not None
    if sa.conn.config.mobike and first_notify(payloads, NotifyType.MOBIKE_SUPPORTED) is not None:
        sa.mobility_to(Mobility.MOBIKE)
        sa.peer_addrs = peer_additional(host, sa, payloads) or ()


def _nat_state(sa: IkeSa, payloads: Sequence[Payload]) -> tuple[bool, bool] | None:
    """(a NAT on the path, our address translated) from the peer's NAT_DETECTION hashes
    over the current path, or None when it sent none (§3.5, RFC 7296 §2.23)."""
    return nat_state(sa.spi_i, sa.spi_r, sa.local, sa.remote, payloads)


def _no_nats_data(src: Endpoint, dst: Endpoint) -> bytes:
    """RFC 4555 §4.2.6: source and destination address, then source and destination port."""
    return (
        ipaddress.ip_address(src[0]).packed
        + ipaddress.ip_address(dst[0]).packed
        + struct.pack("!HH", src[1], dst[1])
    )


# --------------------------------------------------------------------------- initiator


def start_update(
    host: SaHost, sa: IkeSa, local: str | None, remote: str | None, now: float
) -> None:
    """Move the IKE SA to `local`/`remote` (None: keep) with UPDATE_SA_ADDRESSES (§3.5)."""
    assert sa.conn is not None
    if not sa.mobike:
        raise LocalError(f"IKE SA {sa.uid}: MOBIKE is not in use (the peer or the connection)")
    if not sa.initiator:
        raise LocalError(f"IKE SA {sa.uid}: only its initiator may move it (RFC 4555 §3.5)")
    try:
        new_local_ip = ipaddress.ip_address(local) if local else ipaddress.ip_address(sa.local[0])
        new_remote_ip = (
            ipaddress.ip_address(remote) if remote else ipaddress.ip_address(sa.remote[0])
        )
    except ValueError:
        raise LocalError(f"not an IP address: {local or remote!r}") from None
    if new_local_ip.version != new_remote_ip.version:
        raise LocalError(f"{new_local_ip} and {new_remote_ip} are not of one address family")
    if new_local_ip.is_unspecified or new_remote_ip.is_unspecified:
        raise LocalError("an IKE SA cannot move to an unspecified address")
    nat_t = host.settings.nat_t_port
    new_local = (str(new_local_ip), sa.local[1])
    if str(new_remote_ip) == sa.remote[0]:
        new_remote = sa.remote
    else:
        new_remote = (str(new_remote_ip), nat_t if sa.local[1] == nat_t else sa.remote[1])
    pending = sa.mobike_update
    old_local, old_remote = (
        (pending.old_local, pending.old_remote) if pending else (sa.local, sa.remote)
    )
    sa.local, sa.remote = new_local, new_remote
    update = MobikeUpdate(host.random(COOKIE2_SIZE), old_local, old_remote)
    sa.mobike_update = update
    sa.mobility_to(Mobility.UPDATING)
    payloads: list[Payload] = [Notify(NotifyType.UPDATE_SA_ADDRESSES), *nat_notifies(sa)]
    if sa.conn.config.mobike_no_nats:
        payloads.append(Notify(NotifyType.NO_NATS_ALLOWED, _no_nats_data(sa.local, sa.remote)))
    payloads.append(Notify(NotifyType.COOKIE2, update.cookie2))
    payloads += address_notifies(sa.conn, sa.local, say_none=True)

    def on_response(
        h: SaHost, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        _on_update_response(h, s, update, p, n)

    host.stats.mobike_updates_sent += 1
    host.send_request(sa, ExchangeType.INFORMATIONAL, payloads, on_response, now)


def _on_update_response(
    host: SaHost, sa: IkeSa, update: MobikeUpdate, payloads: Sequence[Payload], now: float
) -> None:
    cookie2 = first_notify(payloads, NotifyType.COOKIE2)
    error = error_notify(payloads)
    if error is None and (cookie2 is None or not hmac.compare_digest(cookie2.data, update.cookie2)):
        host.stats.cookie2_mismatches += 1
        sa.queue.clear()
        host.end_sa(sa, EndReason.COOKIE2_MISMATCH, now)  # §3.7: the IKE SA MUST be closed
        return
    if sa.mobike_update is not update:
        return  # a newer update is under way; its answer settles the path
    sa.mobike_update = None
    sa.mobility_to(Mobility.MOBIKE)
    assert sa.conn is not None
    if error is not None:
        tried_local, tried_remote = sa.local, sa.remote
        sa.local, sa.remote = update.old_local, update.old_remote
        host.emit(
            IkeSaMigrateFailed(
                sa.uid,
                sa.name,
                tried_local,
                tried_remote,
                name_of(NotifyType, error.type),
                now,
            )
        )
        return
    _migrated(host, sa, update.old_local, update.old_remote, _nat_state(sa, payloads), now)


def _migrated(
    host: SaHost,
    sa: IkeSa,
    old_local: Endpoint,
    old_remote: Endpoint,
    nat: tuple[bool, bool] | None,
    now: float,
) -> None:
    """The path is settled: new NAT state, keepalives, and the event for the daemon."""
    if nat is not None:
        sa.nat, behind = nat
        if behind != sa.behind_nat:
            sa.behind_nat = behind
            interval = host.settings.keepalive_interval
            sa.keepalive_at = now + interval if behind and interval > 0 else None
            host.lifetimes_changed(sa)
    host.stats.mobike_migrations += 1
    host.emit(
        IkeSaMigrated(
            sa.uid,
            sa.name,
            old_local,
            old_remote,
            sa.local,
            sa.remote,
            sa.nat,
            (sa.local[1], sa.remote[1]) if sa.nat else None,
            tuple((c.spi_in, c.spi_out) for c in sa.children.values()),
            sa.peer_addrs,
            now,
        )
    )


# --------------------------------------------------------------------------- responder


def on_informational(
    host: SaHost,
    sa: IkeSa,
    payloads: Sequence[Payload],
    addr: tuple[Endpoint, Endpoint],
    now: float,
) -> list[Payload]:
    """The MOBIKE part of a peer's INFORMATIONAL request: the payloads to answer with."""
    wanted = {n.type for n in notifies(payloads)}
    if not wanted & _MOBIKE_NOTIFIES:
        return []
    if not sa.mobike:
        if wanted - _NAT_DETECTION:
            host.stats.unexpected += 1  # MOBIKE notifies without MOBIKE: ignored (§3.3)
        return []
    out: list[Payload] = []
    if NotifyType.UPDATE_SA_ADDRESSES in wanted:
        out = _update_request(host, sa, payloads, addr, now)
    elif wanted & _NAT_DETECTION:  # e.g. a liveness check of a peer behind a NAT (§3.8)
        out = nat_notifies(sa, addr)
    addrs = peer_additional(host, sa, payloads)
    if addrs is not None and addrs != sa.peer_addrs:
        sa.peer_addrs = addrs
        host.emit(AdditionalAddressesUpdated(sa.uid, sa.name, addrs, now))
    return out


def _update_request(
    host: SaHost,
    sa: IkeSa,
    payloads: Sequence[Payload],
    addr: tuple[Endpoint, Endpoint],
    now: float,
) -> list[Payload]:
    assert sa.conn is not None
    local, remote = addr
    cookie2 = first_notify(payloads, NotifyType.COOKIE2)
    if cookie2 is not None and not COOKIE2_MIN <= len(cookie2.data) <= COOKIE2_MAX:
        host.stats.mobike_malformed += 1
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "COOKIE2 of a bad length")
    no_nats = first_notify(payloads, NotifyType.NO_NATS_ALLOWED)
    if no_nats is not None:
        if len(no_nats.data) not in (12, 36):
            host.stats.mobike_malformed += 1
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "NO_NATS_ALLOWED of a bad length")
        if no_nats.data != _no_nats_data(remote, local):  # §3.9: a NAT rewrote the header
            raise ProtocolError(NotifyType.UNEXPECTED_NAT_DETECTED)
    conn = sa.conn
    if (
        conn.remote_addrs
        and ipaddress.ip_address(remote[0]) not in conn.remote_addrs
        and remote[0] not in sa.peer_addrs
    ):
        raise ProtocolError(NotifyType.UNACCEPTABLE_ADDRESSES, f"{remote[0]} is not allowed")
    host.stats.mobike_updates_received += 1
    old_local, old_remote = sa.local, sa.remote
    sa.local, sa.remote = local, remote
    _migrated(host, sa, old_local, old_remote, _nat_state(sa, payloads), now)
    out = nat_notifies(sa)
    if cookie2 is not None:
        out.append(Notify(NotifyType.COOKIE2, cookie2.data))
    return out
