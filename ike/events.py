"""Events the engine hands to its caller (pulled with `IkeEngine.next_event()`).

All frozen and slotted; key fields are excluded from repr so an event can be logged as
is. `ike_sa` is the engine's handle of an IKE SA (an int, stable for the SA's life).
Algorithm names are the Linux XFRM names (`ip xfrm state ... aead 'rfc4106(gcm(aes))'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.codec import TrafficSelector

Endpoint = tuple[str, int]  # (IP address, UDP port)


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP payload to send from `local` to `remote` (non-ESP marker already added)."""

    data: bytes
    local: Endpoint
    remote: Endpoint


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    ike_sa: int
    connection: str
    initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: Endpoint
    remote: Endpoint
    local_id: str
    remote_id: str
    proposal: str
    nat_detected: bool
    time: float
    rekey_at: float | None = None  # when this side will rekey it (jittered), None: never
    expire_at: float | None = None  # its hard lifetime
    mobike: bool = False  # both sides announced MOBIKE_SUPPORTED (RFC 4555)
    additional_addrs: tuple[str, ...] = ()  # the peer's ADDITIONAL_IP4/6_ADDRESSes
    # EAP (RFC 7296 §2.16): the identity the initiator proved with EAP ("" without EAP)
    # and the method ("eap-mschapv2", "eap-tls", or e.g. "eap-radius/PEAP" relayed)
    eap_identity: str = ""
    eap_method: str = ""
    # virtual IPs (§2.19): the addresses the responder assigned to the initiator (ours,
    # when we initiated) and the DNS servers that came with them
    virtual_ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    # reauthentication (§2.8.3): the IKE SA this one replaces (it is deleted next)
    reauth_of: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """Everything the daemon needs to install both kernel SAs and the policies.

    Inbound SA: dst = local_addr, SPI spi_in, keys *_in. Outbound: dst = remote_addr,
    SPI spi_out, keys *_out. For AEAD, `encr_alg` is the AEAD name, the keys include the
    4-byte salt and `icv_bits` is the tag length; `integ_alg` is then None. With NAT,
    `encap` is (local port, remote port) for UDP encapsulation (RFC 3948), else None.
    """

    ike_sa: int
    connection: str
    child: str
    initiator: bool
    spi_in: int
    spi_out: int
    mode: str  # "tunnel" | "transport"
    local_addr: str
    remote_addr: str
    encap: tuple[int, int] | None
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    proposal: str
    encr_alg: str
    icv_bits: int
    integ_alg: str | None
    integ_trunc_bits: int
    esn: bool
    encr_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)
    time: float = 0.0
    rekey_at: float | None = None  # when this side will rekey it (jittered), None: never
    expire_at: float | None = None  # its hard lifetime (life_time)
    # reauthentication (§2.8.3), make-before-break: (ike_sa, spi_in) of the Child SA of
    # the older IKE SA that this one takes over, like a rekey (ChildSaRekeyed): install it
    # in its place; keep the old inbound SA until that Child SA's ChildSaDeleted. Sending
    # on the new SA starts at once when `initiator` (the reauthentication's initiator
    # made the Child SA: its peer installed it before answering), else at the
    # ChildSaOutboundSwitched that follows.
    replaces: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class EapRadiusRequest:
    """EAP-RADIUS (RFC 3579 pass-through): the peer's EAP Response `eap` of the IKE SA
    `ike_sa` must go to the RADIUS server (User-Name `identity`); the IKE_AUTH request
    that carried it stays unanswered until `IkeEngine.eap_relay_answer(ike_sa, ...)`
    brings the server's answer. `first`: the conversation's first Access-Request. The
    half-open timeout ends an SA whose answer never comes (IkeSaFailed)."""

    ike_sa: int
    connection: str
    identity: bytes
    eap: bytes = field(repr=False)
    local: Endpoint = ("", 0)
    remote: Endpoint = ("", 0)
    first: bool = False
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed:
    """A Child SA was replaced by a new one (CREATE_CHILD_SA with REKEY_SA, RFC 7296
    §1.3.3): `new` holds the new SPIs and keys (install it as a ChildSaEstablished).

    Make-before-break. `outbound` True (we initiated the rekey): install the new inbound
    and outbound SAs, move the policies to them, remove the old outbound SA and keep the
    old inbound SA (`old_spi_in`) a little longer: the peer may still send on it until it
    has switched. `outbound` False (we answered the rekey): install only the new inbound
    SA and keep sending on the current outbound SA, because the peer cannot decrypt the
    new one before it has our answer; `ChildSaOutboundSwitched` says when to switch.
    A `ChildSaDeleted` with reason "rekeyed" for the old SPIs follows once the old SA
    is deleted with the peer; remove the old inbound SA then (after a short grace).
    After a collision the SA named `old_*` may itself still be waiting for its switch:
    the outbound SA to replace is whichever one is in use.
    """

    ike_sa: int
    connection: str
    child: str
    old_spi_in: int
    old_spi_out: int
    new: ChildSaEstablished
    time: float
    outbound: bool = True  # send on the new SA now (the rekey initiator)


@dataclass(frozen=True, slots=True)
class ChildSaOutboundSwitched:
    """The rekey responder sends on the new SA (`spi_in`/`spi_out`, from an earlier
    `ChildSaRekeyed` with `outbound` False) from now on: install its outbound SA, move
    the policies to it and remove the outbound SA in use (`old_spi_out`, the SA it
    replaced). `reason`: "old SA deleted" (normally the initiator's Delete of the old SA,
    RFC 7296 §2.8) or "timeout" (no Delete within the initiator's retransmission span).
    Always before the old SA's `ChildSaDeleted`."""

    ike_sa: int
    connection: str
    child: str
    spi_in: int
    spi_out: int
    old_spi_in: int
    old_spi_out: int
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """The IKE SA `ike_sa` now runs on new SPIs and keys (RFC 7296 §1.3.2, §2.18); the
    handle and the Child SAs stay, the old IKE SA is deleted without further events."""

    ike_sa: int
    connection: str
    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes
    proposal: str
    time: float
    rekey_at: float | None = None  # the new IKE SA's lifetimes
    expire_at: float | None = None
    # we are the new IKE SA's original initiator: whoever started the rekey is (§2.18),
    # so the role can change with every IKE rekey (None: not reported)
    initiator: bool | None = None


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """A Child SA could not be created; the IKE SA (if established) lives on."""

    ike_sa: int
    connection: str
    child: str
    reason: str  # a NOTIFY name such as TS_UNACCEPTABLE, or a short text
    time: float


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    ike_sa: int
    connection: str
    child: str
    spi_in: int
    spi_out: int
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    """An established IKE SA is gone (its ChildSaDeleted events come first)."""

    ike_sa: int
    connection: str
    spi_i: bytes
    spi_r: bytes
    reason: str  # "deleted", "deleted by peer", "dead peer", "AUTHENTICATION_FAILED", ...
    time: float


@dataclass(frozen=True, slots=True)
class DpdFailed:
    """The peer of an established IKE SA stopped answering (Dead Peer Detection, RFC 7296
    §2.4: a request, often the idle-time liveness check, was retransmitted in vain).
    Comes after its Child SAs' ChildSaDeleted("dead peer") and right before the
    IkeSaDeleted("dead peer"). `actions` = (Child config name, its dpd_action) for each
    Child SA the IKE SA carried: the caller carries them out (clear: nothing more;
    restart: initiate again; trap: install trap policies)."""

    ike_sa: int
    connection: str
    remote: Endpoint
    actions: tuple[tuple[str, str], ...]
    time: float


@dataclass(frozen=True, slots=True)
class IkeSaRedirected:
    """IKEv2 redirect (RFC 5685, ike/redirect.py).

    `initiator` True: the gateway `remote` sent us to `gateway` during `phase` ("init",
    "auth" or "established"); the attempt or SA `ike_sa` is abandoned (an established
    one had its ChildSaDeleted/IkeSaDeleted "redirected" first) and `new_ike_sa` is the
    handle of the new attempt against `gateway`. False: we sent the peer at `remote` to
    `gateway` (`ike_sa` 0 for a stateless IKE_SA_INIT redirect; `new_ike_sa` 0)."""

    ike_sa: int
    connection: str
    initiator: bool
    phase: str
    remote: Endpoint
    gateway: str
    time: float
    new_ike_sa: int = 0


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """An IKE SA failed before it was established. `connection` is None when a responder
    SA fails before the peer was matched to a connection."""

    ike_sa: int
    connection: str | None
    remote: Endpoint
    reason: str
    time: float
    detail: str = ""  # why, for humans (e.g. the certificate check that failed); no secrets


@dataclass(frozen=True, slots=True)
class IkeSaMigrated:
    """MOBIKE (RFC 4555): the IKE SA now runs between `local` and `remote` (after our
    UPDATE_SA_ADDRESSES was answered, or the peer's was accepted). Move every Child SA in
    `children` ((spi_in, spi_out) pairs) to these outer addresses, with UDP encapsulation
    `encap` = (local port, remote port) when a NAT is in the path, else plain ESP."""

    ike_sa: int
    connection: str
    old_local: Endpoint
    old_remote: Endpoint
    local: Endpoint
    remote: Endpoint
    nat_detected: bool
    encap: tuple[int, int] | None
    children: tuple[tuple[int, int], ...]
    additional_addrs: tuple[str, ...]
    time: float


@dataclass(frozen=True, slots=True)
class IkeSaMigrateFailed:
    """Our UPDATE_SA_ADDRESSES was refused (e.g. UNACCEPTABLE_ADDRESSES,
    UNEXPECTED_NAT_DETECTED): the IKE SA stays on its previous addresses."""

    ike_sa: int
    connection: str
    local: Endpoint  # the addresses we tried
    remote: Endpoint
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class AdditionalAddressesUpdated:
    """The peer told us its other addresses (RFC 4555 §3.6): ADDITIONAL_IP4/6_ADDRESS,
    or NO_ADDITIONAL_ADDRESSES (an empty tuple)."""

    ike_sa: int
    connection: str
    additional_addrs: tuple[str, ...]
    time: float


Event = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaRekeyed
    | ChildSaOutboundSwitched
    | IkeSaRekeyed
    | ChildSaFailed
    | ChildSaDeleted
    | IkeSaDeleted
    | IkeSaFailed
    | IkeSaMigrated
    | IkeSaMigrateFailed
    | AdditionalAddressesUpdated
    | DpdFailed
    | IkeSaRedirected
    | EapRadiusRequest
)
