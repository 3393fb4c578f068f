"""The configuration's model: every `[section]` and key as frozen dataclasses, with each
key's default and each vocabulary (the words a key accepts) defined once, here.

    [gateway]                      GatewaySettings: listen, control socket, metrics, data plane
    [gateway.xdp]                  XdpConfig: XDP interfaces, MSS clamping, ESP steering,
                                   early drop, the IKE_SA_INIT shield, the slot space
    [gateway.hooks]                HooksConfig: how updown programs run
    [gateway.radius]               RadiusConfig: the RADIUS servers of eap-radius
    [pools.NAME]                   PoolSection: a virtual-IP address pool
    [connections.NAME]             ConnectionSection: one IKE SA template
    [connections.NAME.children.C]  ChildSection: one Child SA template

docs/config.md documents every key. The reader (gateway/config/reader.py) fills these in;
the engine's own config classes (ike/config.py, same swanctl words) are made from them by
gateway/config/engine.py. Secrets are wrapped in `Secret`, whose repr never shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.control.protocol import DEFAULT_CONTROL_SOCKET
from gateway.radius.client import (
    DEFAULT_PORT as RADIUS_PORT,
)
from gateway.radius.client import (
    RETRANSMIT_BASE as RADIUS_RETRANSMIT_BASE,
)
from gateway.radius.client import (
    RETRANSMIT_TIMEOUT as RADIUS_RETRANSMIT_TIMEOUT,
)
from gateway.radius.client import (
    RETRANSMIT_TRIES as RADIUS_RETRANSMIT_TRIES,
)
from gateway.routing.hooks import HOOK_MAX_CONCURRENT, HOOK_MAX_OUTPUT_LINES, HOOK_TIMEOUT
from gateway.routing.routes import MAIN_TABLE
from ike.config import (
    AUTH_METHODS as AUTH_METHODS,
)
from ike.config import (
    CHILD_LIFE_TIME,
    CHILD_RAND_TIME,
    CHILD_REKEY_TIME,
    DPD_DELAY,
    DPD_TIMEOUT,
    DYNAMIC_TS,
    IKE_OVER_TIME,
    IKE_PORT,
    IKE_RAND_TIME,
    IKE_REKEY_TIME,
    NAT_T_PORT,
    RETRANSMIT_BASE,
    RETRANSMIT_TIMEOUT,
    RETRANSMIT_TRIES,
)
from ike.config import (
    DPD_ACTIONS as DPD_ACTIONS,
)
from ike.config import (
    EAP_METHODS as EAP_METHODS,
)
from ike.config import FRAGMENTATION_MODES as ENGINE_FRAGMENTATION_MODES
from ike.config import (
    MODES as MODES,
)
from ike.config import (
    MUTUAL_EAP_METHODS as MUTUAL_EAP_METHODS,
)
from ike.config import (
    RADIUS_POOL as RADIUS_POOL,
)
from ike.config import (
    REAUTH_TIME as REAUTH_TIME,
)
from ike.config import (
    REDIRECT_PHASES as REDIRECT_PHASES,
)

# Defaults and vocabularies the IKE engine defines too are imported from ike/config.py
# above: here and nowhere else in the gateway.

# --------------------------------------------------------------------------- the gateway's

DEFAULT_METRICS_PORT: Final = 9810
DATAPLANES: Final = ("xfrm", "none")
START_ACTIONS: Final = ("none", "start", "trap")
CLOSE_ACTIONS: Final = ("none", "trap", "start")
OFFLOAD_MODES: Final = ("no", "auto", "crypto", "packet")
# The XDP programs' Child SA slot space: 2**slot_bits slots, slot_bits 1..20 (bpf/abi.py)
MAX_CHILD_SAS_LIMIT: Final = 1 << 20
DEFAULT_MAX_CHILD_SAS: Final = 1 << 16
DEFAULT_COUNTERS_INTERVAL: Final = 1.0  # s: one counter read serves the scrapes/polls within
FRAGMENTATION_MODES: Final = (*ENGINE_FRAGMENTATION_MODES, "force")  # + swanctl's "force"
ANY_ADDR: Final = "%any"
ANY_NETS: Final = ("0.0.0.0/0", "::/0")  # selectors that leave the choice to routing
MIN_PSK_LENGTH: Final = 16
# What the keyword "default" (or no setting) stands for in our TOML: the suites every peer
# here must speak (not ike.config's defaults, the engine API's single suite).
STANDARD_IKE_PROPOSALS: Final = ("aes256gcm16-prfsha384-x25519", "aes128-sha256-ecp256")
STANDARD_ESP_PROPOSALS: Final = ("aes256gcm16", "aes128-sha256")


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value (PSK). Compared by value (so reload sees a changed PSK), never shown."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class XdpConfig:
    """`[gateway.xdp]`: the XDP/TC programs' interfaces, MSS clamping, ESP steering,
    unknown-SPI drop, the IKE_SA_INIT shield and the slot space (docs/bpf.md)."""

    wan_interface: str | None = None
    lan_interface: str | None = None
    # True (the default): clamp TCP MSS to what the tunnel MTU allows (derived from the
    # negotiated suite, docs/bpf.md); an int: clamp to that MSS; None (`false`): no clamping.
    mss_clamp: int | bool | None = True
    # ESP steering: each Child SA's ESP is processed on one CPU of this set (cpumap);
    # () = off, "all" = every CPU the daemon may run on
    steer_cpus: tuple[int, ...] | str = ()
    drop_unknown_spi: bool = False  # drop ESP whose SPI is none of ours at XDP
    # IKE_SA_INIT shield: per source (IPv4 address, IPv6 /64) `ike_init_rate` requests/s
    # with bursts of `ike_init_burst`; all sources together `ike_init_budget`/s with
    # bursts of `ike_init_budget_burst`. None = that part off.
    ike_init_rate: float | None = None
    ike_init_burst: int | None = None  # None: the rate's one second worth (at least 1)
    ike_init_budget: float | None = None
    ike_init_budget_burst: int | None = None
    max_child_sas: int = DEFAULT_MAX_CHILD_SAS  # slots: rounded up to a power of two

    @property
    def slot_bits(self) -> int:
        """The programs' slot bits for `max_child_sas` (1..20)."""
        return max(1, (self.max_child_sas - 1).bit_length())

    @property
    def attach_keys(self) -> XdpConfig:
        """Only the keys that take effect when the programs are attached (a restart):
        the ones a reload changes in place (steering, drop, shield) at their defaults."""
        return XdpConfig(
            self.wan_interface,
            self.lan_interface,
            self.mss_clamp,
            max_child_sas=self.max_child_sas,
        )


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """`[gateway.hooks]`: how the children's updown programs run (docs/routing.md)."""

    timeout: float = HOOK_TIMEOUT
    max_concurrent: int = HOOK_MAX_CONCURRENT
    max_output_lines: int = HOOK_MAX_OUTPUT_LINES


@dataclass(frozen=True, slots=True)
class RadiusServerConfig:
    """`[gateway.radius.servers.NAME]` (strongswan.conf eap-radius.servers.NAME)."""

    name: str
    address: str
    secret: Secret
    port: int = RADIUS_PORT


@dataclass(frozen=True, slots=True)
class RadiusConfig:
    """`[gateway.radius]`: where eap-radius connections relay EAP (strongswan.conf
    charon.plugins.eap-radius). A conversation starts at the first server; the next one
    is tried when it does not answer the first Access-Request."""

    servers: tuple[RadiusServerConfig, ...] = ()
    nas_identifier: str = "gateway"
    retransmit_timeout: float = RADIUS_RETRANSMIT_TIMEOUT
    retransmit_base: float = RADIUS_RETRANSMIT_BASE
    retransmit_tries: int = RADIUS_RETRANSMIT_TRIES


@dataclass(frozen=True, slots=True)
class PoolSection:
    """`[pools.NAME]` (swanctl.conf pools.NAME): addresses for the peers' virtual IPs,
    and the DNS servers that go with them."""

    name: str
    addrs: str
    dns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """`[gateway]`: listen addresses, control socket, metrics, data plane, workers."""

    listen: tuple[str, ...] = ("0.0.0.0", "::")
    port: int = IKE_PORT
    port_nat_t: int = NAT_T_PORT
    control_socket: str = DEFAULT_CONTROL_SOCKET
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", DEFAULT_METRICS_PORT)
    # "child": traffic series per connection+child; "connection": summed per connection
    # (fewer series for very large deployments, docs/metrics.md)
    metrics_aggregate: str = "child"
    dataplane: str = "xfrm"
    workers: int = 1
    log_level: str = "info"
    xdp: XdpConfig | None = None
    hooks: HooksConfig = HooksConfig()
    # per-SA counters: one read (XFRM dump / XDP slot table) serves every scrape and
    # console poll within this many seconds; at most one read runs at a time
    counters_interval: float = DEFAULT_COUNTERS_INTERVAL
    # strongswan.conf charon.retransmit_*: timeout * base**n, give up after `tries`
    retransmit_timeout: float = RETRANSMIT_TIMEOUT
    retransmit_base: float = RETRANSMIT_BASE
    retransmit_tries: int = RETRANSMIT_TRIES
    # the EAP users (swanctl.conf `secrets { eap-NAME }` in TOML, gateway/eap_secrets.py)
    eap_secrets: str | None = None
    radius: RadiusConfig | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """swanctl.conf `local`/`remote` sections (one round; IKEv2 has no second round here)."""

    auth: str = "psk"
    id: str | None = None
    certs: tuple[str, ...] = ()  # certificate files (PEM/DER)
    cacerts: tuple[str, ...] = ()  # trust anchors for the peer's certificate (remote)
    key: str | None = None  # private key file (local, pubkey auth)
    crls: tuple[str, ...] = ()  # CRL files checked along the peer's chain (remote)
    # EAP identity (swanctl eap_id): remote, None = the IKE identity, "%any" = ask for
    # any; local, None = our `id`
    eap_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChildSection:
    """`[connections.NAME.children.C]`: one Child SA template (swanctl.conf `children.C`)."""

    name: str
    local_ts: tuple[str, ...] = (DYNAMIC_TS,)
    remote_ts: tuple[str, ...] = (DYNAMIC_TS,)
    esp_proposals: tuple[str, ...] = STANDARD_ESP_PROPOSALS
    mode: str = "tunnel"
    start_action: str = "none"
    dpd_action: str = "clear"
    close_action: str = "none"
    rekey_time: float = CHILD_REKEY_TIME
    life_time: float = CHILD_LIFE_TIME
    rand_time: float = CHILD_RAND_TIME
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    offload: str = "no"
    # the device offload is asked on; None: the one the route to the peer uses
    offload_interface: str | None = None
    # strongSwan's set_mark_out: the mark the outbound SA puts on its ESP packets
    # (XFRMA_SET_MARK), e.g. for a policy route through an offload device; None: none
    set_mark_out: int | None = None
    replay_window: int | None = None  # None: the data plane's default
    # Route-based (docs/routing.md): the if_id of this Child's inbound SA and in/fwd
    # policies and of its outbound SA and out policy (swanctl's if_id_in / if_id_out)...
    if_id_in: int | None = None
    if_id_out: int | None = None
    # ... and the XFRM interface with that if_id the daemon creates (or adopts), sets up
    # while the Child is up and routes `routes` into (in `route_table`, `route_metric`)
    interface: str | None = None
    interface_mtu: int | None = None  # None ("auto"): path MTU minus the ESP overhead
    interface_addresses: tuple[str, ...] = ()  # e.g. 169.254.10.1/30 for BGP inside
    routes: tuple[str, ...] | None = None  # None: remote_ts that are not 0.0.0.0/0, ::/0
    route_table: int = MAIN_TABLE
    route_metric: int = 0
    # swanctl's updown: a program run on up/down (and rekey with updown_rekey)
    updown: str | None = None
    updown_rekey: bool = False

    @property
    def route_based(self) -> bool:
        return self.interface is not None

    @property
    def route_prefixes(self) -> tuple[str, ...]:
        """The prefixes the daemon routes into this Child's interface while it is up."""
        if self.routes is not None:
            return self.routes
        return tuple(ts for ts in self.remote_ts if ts not in (DYNAMIC_TS, *ANY_NETS))


@dataclass(frozen=True, slots=True)
class ConnectionSection:
    """`[connections.NAME]`: one IKE SA template (swanctl.conf `connections.NAME`)."""

    name: str
    local_addrs: tuple[str, ...] = (ANY_ADDR,)
    remote_addrs: tuple[str, ...] = (ANY_ADDR,)
    local_port: int = IKE_PORT
    remote_port: int = IKE_PORT
    local: AuthConfig = AuthConfig()
    remote: AuthConfig = AuthConfig()
    psk: Secret | None = None
    ike_proposals: tuple[str, ...] = STANDARD_IKE_PROPOSALS
    dpd_delay: float = DPD_DELAY
    dpd_timeout: float = DPD_TIMEOUT  # the peer is dead once a check went unanswered this long
    # this connection's retransmission schedule (None: [gateway]'s)
    retransmit_timeout: float | None = None
    retransmit_base: float | None = None
    retransmit_tries: int | None = None
    rekey_time: float = IKE_REKEY_TIME
    reauth_time: float = REAUTH_TIME
    over_time: float = IKE_OVER_TIME
    rand_time: float = IKE_RAND_TIME
    mobike: bool = True
    # IKEv2 redirect (RFC 5685): follow a gateway's REDIRECT (as initiator); send every
    # new peer to `redirect_to` (as responder), in IKE_SA_INIT or IKE_AUTH (`redirect_on`)
    follow_redirects: bool = True
    redirect_to: str | None = None
    redirect_on: str = "init"
    fragmentation: str = "yes"
    encap: bool = False
    keyingtries: int = 1
    # virtual IPs: the pools we hand them out of (responder; "radius": the RADIUS
    # server's Framed-IP-Address), the ones we ask for ("0.0.0.0", "::"; initiator)
    pools: tuple[str, ...] = ()
    vips: tuple[str, ...] = ()
    children: tuple[ChildSection, ...] = ()

    def child(self, name: str) -> ChildSection | None:
        return next((c for c in self.children if c.name == name), None)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A whole configuration file, as read and checked."""

    gateway: GatewaySettings
    connections: tuple[ConnectionSection, ...]
    source: str = "<string>"
    pools: tuple[PoolSection, ...] = ()

    def connection(self, name: str) -> ConnectionSection | None:
        return next((c for c in self.connections if c.name == name), None)


TRAP_NEEDS_KERNEL = (
    'trap needs trap policies in the kernel; dataplane = "none" installs nothing '
    '(use dataplane = "xfrm", or start_action "start"/"none")'
)


TRAP_NEEDS_ONE_WORKER = (
    "trap with workers > 1 is not supported: the kernel holds one trap policy per "
    "selector, and a Child SA the peer initiates may land on a worker that does not own "
    "it (use workers = 1)"
)


def trap_actions(
    connections: Iterable[ConnectionSection],
) -> Iterator[tuple[ConnectionSection, ChildSection, str]]:
    """(connection, child, key) of every start/dpd/close action set to "trap"."""
    for conn in connections:
        for child in conn.children:
            for key in ("start_action", "dpd_action", "close_action"):
                if getattr(child, key) == "trap":
                    yield conn, child, key


ROUTE_BASED_NEEDS_KERNEL = (
    'a route-based child needs the kernel; dataplane = "none" installs nothing '
    '(use dataplane = "xfrm")'
)


def route_based_children(
    connections: Iterable[ConnectionSection],
) -> Iterator[tuple[ConnectionSection, ChildSection]]:
    """(connection, child) of every child with an XFRM interface."""
    for conn in connections:
        for child in conn.children:
            if child.route_based:
                yield conn, child


def xfrm_interfaces(connections: Iterable[ConnectionSection]) -> dict[str, int]:
    """interface -> if_id of every route-based child (the reader checked they agree)."""
    out: dict[str, int] = {}
    for _, child in route_based_children(connections):
        if child.interface is not None and child.if_id_in is not None:
            out.setdefault(child.interface, child.if_id_in)
    return out


def concrete(addr: str) -> bool:
    """A config address that names one address (not %any, not a subnet, not a wildcard)."""
    return addr != ANY_ADDR and "/" not in addr and addr not in ("0.0.0.0", "::")


def iter_children(config: GatewayConfig) -> Iterator[tuple[ConnectionSection, ChildSection]]:
    """Every (connection, child) of a configuration, in file order."""
    for conn in config.connections:
        for child in conn.children:
            yield conn, child


def configured_children(config: GatewayConfig) -> tuple[tuple[str, str, str], ...]:
    """(connection, child, start_action) of every configured Child (the metrics'
    ipsec_configured_child_sas)."""
    return tuple(
        (conn.name, child.name, child.start_action) for conn, child in iter_children(config)
    )
