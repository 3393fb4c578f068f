"""Connection configuration for the engine (the daemon converts its TOML into these).

The one definition of every engine default and vocabulary word: the named constants
below are what the dataclass defaults refer to, and what gateway/config imports rather
than writing them again. Everything is a frozen dataclass; the PSK is hidden from repr.
`compile_connection` validates a connection and precomputes what the engine needs
(parsed proposals, IDs, traffic selectors); it raises LocalError with the connection and
key that is wrong, so the daemon can report config errors before starting.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from ike.constants import IdType, ProtocolId
from ike.crypto import PRF
from ike.errors import LocalError
from ike.keys import psk_pad
from ike.pki.names import dn_from_text, dn_to_text, subject_identity
from ike.pki.x509 import LocalCredential, TrustAnchors, load_credential, load_trust
from ike.proposals import ProposalSpec, parse_proposals
from ike.ts import TrafficSelector, ts_from_text

# --------------------------------------------------------------------------- vocabulary
# swanctl.conf's words for each choice; the first one is the default.

AUTH_METHODS: Final = ("psk", "pubkey")  # local_auth / remote_auth
MODES: Final = ("tunnel", "transport")  # ChildConfig.mode
# what the caller should do with a Child SA whose peer is dead (DpdFailed.actions)
DPD_ACTIONS: Final = ("clear", "restart", "trap")
# IKE fragmentation (RFC 7383) per connection; swanctl's "force" (IKEv1 only) is the
# gateway's to map to "yes"
FRAGMENTATION_MODES: Final = ("yes", "accept", "no")
# where a connection's `redirect_to` rule redirects new peers (RFC 5685)
REDIRECT_PHASES: Final = ("init", "auth")
ANY_ID: Final = ("", "%any")  # remote_id values that accept any peer identity
DYNAMIC_TS: Final = "dynamic"  # a traffic selector that is the IKE SA's own address

# --------------------------------------------------------------------------- defaults
# strongSwan's defaults and meaning. Lifetimes: rekey at REKEY_TIME minus a random
# 0..RAND_TIME; the hard end at LIFE_TIME (Child) or REKEY_TIME + OVER_TIME (IKE).

CHILD_REKEY_TIME: Final = 3600.0
CHILD_LIFE_TIME: Final = 3960.0
CHILD_RAND_TIME: Final = 360.0
IKE_REKEY_TIME: Final = 14400.0
IKE_OVER_TIME: Final = 1440.0
IKE_RAND_TIME: Final = 1440.0
DPD_DELAY: Final = 0.0  # off
IKE_PORT: Final = 500
NAT_T_PORT: Final = 4500
DEFAULT_IKE_PROPOSALS: Final = ("aes256gcm16-prfsha384-x25519",)
DEFAULT_ESP_PROPOSALS: Final = ("aes256gcm16",)
# charon's retransmission: timeout * base**n, given up after `tries` retransmissions
RETRANSMIT_TIMEOUT: Final = 4.0
RETRANSMIT_BASE: Final = 1.8
RETRANSMIT_TRIES: Final = 5
HALF_OPEN_TIMEOUT: Final = 30.0
COOKIE_THRESHOLD: Final = 100
COOKIE_SECRET_LIFETIME: Final = 300.0
NONCE_SIZE: Final = 32
FRAGMENT_SIZE: Final = 1280  # bytes of IP datagram
KEEPALIVE_INTERVAL: Final = 20.0

_FQDN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def check_gateway(text: str) -> str:
    """A gateway identity as configured (`redirect_to`, RFC 5685): an IPv4/IPv6 address
    (returned in its canonical form) or an FQDN; LocalError otherwise."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _FQDN.match(text) or text.replace(".", "").isdigit():
        raise LocalError(f"{text!r} is neither an IP address nor a host name")
    return text


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """One Child SA. Empty `local_ts`/`remote_ts` mean "dynamic" (the IKE SA's address)."""

    name: str
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    esp_proposals: tuple[str, ...] = DEFAULT_ESP_PROPOSALS
    mode: str = MODES[0]
    # Lifetimes (strongSwan's defaults and meaning): rekey `rekey_time` minus a random
    # 0..rand_time after installation; delete at `life_time` if rekeying did not succeed.
    # 0 disables the timer.
    rekey_time: float = CHILD_REKEY_TIME
    life_time: float = CHILD_LIFE_TIME
    rand_time: float = CHILD_RAND_TIME
    # What the caller should do when the peer is found dead (swanctl's dpd_action):
    # "clear", "restart" or "trap"; the engine only reports it (DpdFailed.actions).
    dpd_action: str = DPD_ACTIONS[0]


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """One IKE connection (strongSwan's `connections.<name>` in swanctl.conf words).

    IDs use strongSwan's syntax: an IP address, ``@fqdn``, ``user@fqdn``, a plain name
    (FQDN), or ``@#hex`` (key ID). An empty local_id means the local address; an empty
    remote_id or ``%any`` accepts any peer ID.
    """

    name: str
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    local_id: str = ""
    remote_id: str = ""
    psk: bytes = field(default=b"", repr=False)
    ike_proposals: tuple[str, ...] = DEFAULT_IKE_PROPOSALS
    children: tuple[ChildConfig, ...] = ()
    local_port: int = IKE_PORT
    remote_port: int = IKE_PORT
    # Authentication per direction (swanctl's local/remote `auth`): "psk" or "pubkey".
    # Certificates, keys and CRLs arrive as bytes (PEM or DER); ike/ never reads files.
    local_auth: str = AUTH_METHODS[0]
    remote_auth: str = AUTH_METHODS[0]
    certs: tuple[bytes, ...] = ()  # ours first, then intermediates we send (local pubkey)
    private_key: bytes = field(default=b"", repr=False)  # unencrypted PEM or DER
    cacerts: tuple[bytes, ...] = ()  # trust anchors for the peer's certificate
    remote_certs: tuple[bytes, ...] = ()  # peer certificates trusted as they are
    crls: tuple[bytes, ...] = ()  # revocation lists checked along the peer's chain
    rsa_pss: bool = True  # our RSA key signs with RSASSA-PSS (else PKCS#1 v1.5)
    # IKE SA lifetime: rekey at `rekey_time` minus a random 0..rand_time; deleted at
    # rekey_time + over_time if rekeying did not succeed (strongSwan's meaning). 0: never.
    rekey_time: float = IKE_REKEY_TIME
    over_time: float = IKE_OVER_TIME
    rand_time: float = IKE_RAND_TIME
    # MOBIKE (RFC 4555, ike/mobike.py): announce MOBIKE_SUPPORTED in IKE_AUTH; when both
    # sides do, IKE moves to the NAT-T port and the IKE SA can change its addresses.
    mobike: bool = False
    # IKE fragmentation (RFC 7383) for this connection, in swanctl's words: "yes" announce
    # and fragment oversized messages, "accept" announce and reassemble the peer's but never
    # fragment ours, "no" do not announce. (swanctl's "force" is IKEv1 only: here "yes".)
    # EngineSettings.fragmentation=False turns it off for every connection.
    fragmentation: str = FRAGMENTATION_MODES[0]
    # RFC 4555 §3.9: our UPDATE_SA_ADDRESSES requests carry NO_NATS_ALLOWED
    mobike_no_nats: bool = False
    # IKEv2 redirect (RFC 5685, ike/redirect.py). As initiator: announce support and
    # follow a gateway's REDIRECT. As responder: send every new peer that supports it to
    # `redirect_to` (an IP address or FQDN), in IKE_SA_INIT or, after authenticating
    # it, in IKE_AUTH (`redirect_on`). "": no redirect.
    follow_redirects: bool = True
    redirect_to: str = ""
    redirect_on: str = REDIRECT_PHASES[0]
    # Dead Peer Detection (RFC 7296 §2.4): an empty INFORMATIONAL once nothing arrived
    # from the peer for this long (IKE messages, or ESP the InboundTraffic hook reports);
    # the peer is dead when the retransmissions fail. 0: off.
    dpd_delay: float = DPD_DELAY


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine-wide knobs (defaults follow strongSwan's charon settings)."""

    retransmit_timeout: float = RETRANSMIT_TIMEOUT
    retransmit_base: float = RETRANSMIT_BASE
    retransmit_tries: int = RETRANSMIT_TRIES
    half_open_timeout: float = HALF_OPEN_TIMEOUT
    # Demand a COOKIE (RFC 7296 §2.6) once this many responder SAs are half-open.
    cookie_threshold: int = COOKIE_THRESHOLD
    # a new COOKIE secret this often (the previous one still accepted)
    cookie_secret_lifetime: float = COOKIE_SECRET_LIFETIME
    nat_t_port: int = NAT_T_PORT
    nonce_size: int = NONCE_SIZE
    # IKE fragmentation (RFC 7383): offered in IKE_SA_INIT; when both sides support it, an
    # encrypted message whose IP datagram would exceed fragment_size goes as SKF fragments
    fragmentation: bool = True
    fragment_size: int = FRAGMENT_SIZE  # bytes of IP datagram (strongSwan's default)
    # NAT-T keepalives (RFC 3948 §2.3) every this many seconds while we are behind a NAT
    keepalive_interval: float = KEEPALIVE_INTERVAL


# --------------------------------------------------------------------------- identities


def parse_identity(text: str) -> tuple[int, bytes]:
    """strongSwan-style ID string -> (ID type, ID data) (RFC 7296 §3.5)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        kind = IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR
        return kind, addr.packed
    if text.startswith("@#"):
        try:
            return IdType.ID_KEY_ID, bytes.fromhex(text[2:])
        except ValueError:
            raise LocalError(f"identity {text!r}: key ID is not hex") from None
    if text.startswith("@"):
        return IdType.ID_FQDN, text[1:].encode()
    if "=" in text:  # a DN in strongSwan's syntax: C=CH, O=Example, CN=gw
        return IdType.ID_DER_ASN1_DN, dn_from_text(text)
    if "@" in text:
        return IdType.ID_RFC822_ADDR, text.encode()
    if not text:
        raise LocalError("empty identity")
    return IdType.ID_FQDN, text.encode()


@functools.lru_cache(maxsize=4096)
def format_identity(id_type: int, data: bytes) -> str:
    """An ID for humans (and the control API)."""
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and len(data) in (4, 16):
        return str(ipaddress.ip_address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return data.decode("utf-8", "replace")
    if id_type == IdType.ID_KEY_ID:
        return "@#" + data.hex()
    if id_type == IdType.ID_DER_ASN1_DN:
        text = dn_to_text(data)
        if text is not None:
            return text
    return f"{id_type}:{data.hex()}"


# --------------------------------------------------------------------------- compiled form


@dataclass(frozen=True, slots=True)
class CompiledChild:
    config: ChildConfig
    local_ts: tuple[TrafficSelector, ...]  # empty: dynamic
    remote_ts: tuple[TrafficSelector, ...]
    esp: tuple[ProposalSpec, ...]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def transport(self) -> bool:
        return self.config.mode == MODES[1]


@dataclass(frozen=True, slots=True)
class CompiledConnection:
    config: ConnectionConfig
    ike: tuple[ProposalSpec, ...]
    local_id: tuple[int, bytes] | None  # None: the local address
    remote_id: tuple[int, bytes] | None  # None: any
    local_addrs: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    remote_addrs: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    children: tuple[CompiledChild, ...]
    # prf(PSK, "Key Pad for IKEv2") per PRF hash name: derived from the PSK, hidden like it
    psk_pads: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # pubkey authentication (ike.auth): ours (local pubkey) and what the peer must chain to
    credential: LocalCredential | None = field(default=None, repr=False, compare=False)
    trust: TrustAnchors | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.config.name

    def child(self, name: str | None) -> CompiledChild:
        if not self.children:
            raise LocalError(f"connection {self.name!r} has no children")
        if name is None:
            return self.children[0]
        for c in self.children:
            if c.name == name:
                return c
        raise LocalError(f"connection {self.name!r} has no child {name!r}")


def _addrs(conn: str, key: str, values: tuple[str, ...]) -> tuple:  # type: ignore[type-arg]
    out = []
    for v in values:
        if v in ("%any", "0.0.0.0", "::"):
            continue
        try:
            out.append(ipaddress.ip_address(v))
        except ValueError:
            raise LocalError(f"connection {conn!r}: {key}: {v!r} is not an IP address") from None
    return tuple(out)


def _check_lifetimes(where: str, rekey: float, over: float, rand: float) -> None:
    if rekey < 0 or rand < 0:
        raise LocalError(f"{where}: rekey_time and rand_time must not be negative")
    if rekey and over <= 0:
        raise LocalError(f"{where}: the hard lifetime must be longer than rekey_time")
    if rekey and rand >= rekey:
        raise LocalError(f"{where}: rand_time must be shorter than rekey_time")


def compile_connection(conf: ConnectionConfig) -> CompiledConnection:
    name = conf.name
    if not name:
        raise LocalError("connection without a name")
    try:
        ike = parse_proposals(conf.ike_proposals, ProtocolId.IKE)
    except LocalError as exc:
        raise LocalError(f"connection {name!r}: ike_proposals: {exc}") from None
    for key, value in (("local_auth", conf.local_auth), ("remote_auth", conf.remote_auth)):
        if value not in AUTH_METHODS:
            raise LocalError(f"connection {name!r}: {key}: {value!r} is not psk or pubkey")
    uses_psk = "psk" in (conf.local_auth, conf.remote_auth)
    if uses_psk and not conf.psk:
        raise LocalError(f"connection {name!r}: psk: a pre-shared key is required")
    credential = trust = None
    try:
        if conf.local_auth == "pubkey":
            credential = load_credential(conf.certs, conf.private_key, rsa_pss=conf.rsa_pss)
        if conf.remote_auth == "pubkey":
            trust = load_trust(conf.cacerts, conf.remote_certs, conf.crls)
        local_id = parse_identity(conf.local_id) if conf.local_id else None
        if local_id is None and credential is not None:
            local_id = subject_identity(credential.certs[0])
        remote_id = None if conf.remote_id in ANY_ID else parse_identity(conf.remote_id)
    except LocalError as exc:
        raise LocalError(f"connection {name!r}: {exc}") from None
    _check_lifetimes(f"connection {name!r}", conf.rekey_time, conf.over_time, conf.rand_time)
    if conf.dpd_delay < 0:
        raise LocalError(f"connection {name!r}: dpd_delay must not be negative")
    if conf.redirect_on not in REDIRECT_PHASES:
        raise LocalError(
            f"connection {name!r}: redirect_on: {conf.redirect_on!r} is not init or auth"
        )
    if conf.redirect_to:
        try:
            check_gateway(conf.redirect_to)
        except LocalError as exc:
            raise LocalError(f"connection {name!r}: redirect_to: {exc}") from None
    children = []
    seen = set()
    for ch in conf.children:
        where = f"connection {name!r} child {ch.name!r}"
        if not ch.name or ch.name in seen:
            raise LocalError(f"{where}: child names must be unique and non-empty")
        seen.add(ch.name)
        if ch.mode not in MODES:
            raise LocalError(f"{where}: mode: {ch.mode!r} is not tunnel or transport")
        if ch.dpd_action not in DPD_ACTIONS:
            raise LocalError(f"{where}: dpd_action: {ch.dpd_action!r} is not one of {DPD_ACTIONS}")
        over = ch.life_time - ch.rekey_time if ch.life_time else 1.0  # life_time 0: no hard limit
        _check_lifetimes(where, ch.rekey_time, over, ch.rand_time)
        try:
            esp = parse_proposals(ch.esp_proposals, ProtocolId.ESP)
            lts = tuple(ts_from_text(t) for t in ch.local_ts if t != DYNAMIC_TS)
            rts = tuple(ts_from_text(t) for t in ch.remote_ts if t != DYNAMIC_TS)
        except LocalError as exc:
            raise LocalError(f"{where}: {exc}") from None
        children.append(CompiledChild(ch, lts, rts, esp))
    return CompiledConnection(
        conf,
        ike,
        local_id,
        remote_id,
        _addrs(name, "local_addrs", conf.local_addrs),
        _addrs(name, "remote_addrs", conf.remote_addrs),
        tuple(children),
        {p.hash: psk_pad(p, conf.psk) for p in PRF.values()} if uses_psk else {},
        credential,
        trust,
    )
