"""The SA model: one IKE SA and its Child SAs, their explicit states and transitions.

Theory of operation
-------------------
An IKE SA's condition is a handful of independent enums, never a set of booleans; each
has a table of the moves it may make, and every move goes through ``IkeSa.move``,
``IkeSa.succeed``, ``IkeSa.rekey_to``, ``IkeSa.mobility_to`` (or ``ChildSa.move`` /
``ChildSa.rekey_to``), which refuse any move not in the table (InvalidTransition: a bug
of ours, never the peer's fault). Data that goes with a state (our rekey's handler, a
collision's nonces, MOBIKE's COOKIE2) stays in plain fields next to it.

``State``, the lifecycle (RFC 7296 §1.2; the control API shows ``State.public``)::

    initiator:  INIT_SENT --IKE_SA_INIT resp--> AUTH_SENT --IKE_AUTH resp--> ESTABLISHED
    responder:  (IKE_SA_INIT req) AUTH_WAIT --IKE_AUTH req--> ESTABLISHED
    both:       ESTABLISHED --our Delete(IKE)--> DELETING --answer/give-up--> (gone)
                ESTABLISHED/DELETING --peer's Delete(IKE)--> CLOSED (reported; lingers
                            to answer a retransmitted request, then goes)
                AUTH_WAIT --AUTH fails--> CLOSED; AUTH_SENT/AUTH_WAIT --redirected--> DELETING

``Succession``: does this SA carry its handle (``uid``), i.e. are its changes events?
A rekey (§1.3.2) makes a new IKE SA that takes the handle over; the old one goes
silently. The states keep apart what one flag used to mean::

    PENDING --take over--> CURRENT       a rekey's new SA, once it carries the handle
    PENDING --lost the collision--> REDUNDANT   (§2.8.2: deleted by its initiator)
    CURRENT --taken over--> REKEYED      answers the peer until deleted or it lingers out
    CURRENT --left--> ABANDONED          redirected away (RFC 5685): no further events

``RekeyState``, our IKE SA rekey (§1.3.2, §2.8.2)::

    IDLE --our CREATE_CHILD_SA(SA IKE)--> REKEYING --answer--> IDLE
    REKEYING --we answered the peer's rekey too--> COLLIDING --answer--> IDLE
    COLLIDING --the peer deleted the old SA--> REKEYING (its new SA took over)

``Mobility`` (RFC 4555): FIXED (no MOBIKE; the path follows NAT mappings, §2.23),
MOBIKE (only UPDATE_SA_ADDRESSES moves the SA), UPDATING (ours is under way).

A Child SA has ``ChildState`` (INSTALLED --our Delete--> DELETING; it leaves ``children``
when the Delete is answered, the peer deletes it or the IKE SA ends) and ``ChildRekey``::

    IDLE --our rekey--> REKEYING --answer--> IDLE or REKEYED
    REKEYING --we answered the peer's rekey of it--> COLLIDING --answer--> REKEYED
    IDLE --we answered the peer's rekey--> REKEYED (waits for the initiator's Delete)

A rekey responder keeps sending on the older SA until the initiator's Delete of it
arrives (or ``switch_at`` passes): ``outbound_from`` names that older SA (§2.8).

Ending: an SA ends in exactly one way, ``IkeEngine``'s ``end_sa(sa, reason, now, after)``.
The ``EndReason`` decides the events: none when the SA no longer carries its handle (not
CURRENT) or already reported its end (CLOSED) or for a redirect before it was
established (IkeSaRedirected tells that); ``IkeSaFailed`` when it never was established;
else ``ChildSaDeleted`` for each Child SA, ``DpdFailed`` for a dead peer, ``IkeSaDeleted``.
``After`` says what is left: nothing (REMOVE), a CLOSED SA that answers retransmits
(LINGER), or an ABANDONED one whose Delete goes to the peer (DELETE).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TypeVar

from ike.auth import PeerHints
from ike.codec import Payload
from ike.config import CompiledChild, CompiledConnection
from ike.crypto import DhPrivate
from ike.events import Endpoint
from ike.keys import IkeSaKeys
from ike.proposals import EspSuite, IkeSuite
from ike.sk import SkCipher
from ike.ts import TrafficSelector
from ike.window import Fragments, Request, ResponseHandler, Wire

ZERO_SPI = bytes(8)
_E = TypeVar("_E", bound=enum.Enum)


class InvalidTransition(AssertionError):
    """A move that the state tables do not allow: a bug in the engine."""


class State(enum.Enum):
    INIT_SENT = enum.auto()
    AUTH_SENT = enum.auto()
    AUTH_WAIT = enum.auto()
    ESTABLISHED = enum.auto()
    DELETING = enum.auto()
    CLOSED = enum.auto()

    @property
    def public(self) -> str:
        """The control API's state name (list-sas)."""
        return _PUBLIC_STATE[self]


_PUBLIC_STATE = {
    State.INIT_SENT: "CONNECTING",
    State.AUTH_SENT: "CONNECTING",
    State.AUTH_WAIT: "CONNECTING",
    State.ESTABLISHED: "ESTABLISHED",
    State.DELETING: "DELETING",
    State.CLOSED: "DELETING",
}

_S = State
STATE_MOVES: dict[State, frozenset[State]] = {
    _S.INIT_SENT: frozenset({_S.AUTH_SENT}),
    _S.AUTH_SENT: frozenset({_S.ESTABLISHED, _S.DELETING}),
    _S.AUTH_WAIT: frozenset({_S.ESTABLISHED, _S.CLOSED, _S.DELETING}),
    _S.ESTABLISHED: frozenset({_S.DELETING, _S.CLOSED}),
    _S.DELETING: frozenset({_S.DELETING, _S.CLOSED}),
    _S.CLOSED: frozenset({_S.CLOSED, _S.DELETING}),
}


class Succession(enum.Enum):
    CURRENT = enum.auto()
    PENDING = enum.auto()
    REKEYED = enum.auto()
    REDUNDANT = enum.auto()
    ABANDONED = enum.auto()


_U = Succession
SUCCESSION_MOVES: dict[Succession, frozenset[Succession]] = {
    _U.PENDING: frozenset({_U.CURRENT, _U.REDUNDANT}),
    _U.CURRENT: frozenset({_U.REKEYED, _U.ABANDONED}),
    _U.REKEYED: frozenset(),
    _U.REDUNDANT: frozenset(),
    _U.ABANDONED: frozenset(),
}


class RekeyState(enum.Enum):
    IDLE = enum.auto()
    REKEYING = enum.auto()
    COLLIDING = enum.auto()


_R = RekeyState
REKEY_MOVES: dict[RekeyState, frozenset[RekeyState]] = {
    _R.IDLE: frozenset({_R.REKEYING}),
    _R.REKEYING: frozenset({_R.IDLE, _R.COLLIDING}),
    _R.COLLIDING: frozenset({_R.IDLE, _R.REKEYING}),
}


class Mobility(enum.Enum):
    FIXED = enum.auto()
    MOBIKE = enum.auto()
    UPDATING = enum.auto()


_M = Mobility
MOBILITY_MOVES: dict[Mobility, frozenset[Mobility]] = {
    _M.FIXED: frozenset({_M.MOBIKE}),
    _M.MOBIKE: frozenset({_M.UPDATING}),
    _M.UPDATING: frozenset({_M.MOBIKE, _M.UPDATING}),
}


class ChildState(enum.Enum):
    INSTALLED = enum.auto()
    DELETING = enum.auto()


CHILD_MOVES: dict[ChildState, frozenset[ChildState]] = {
    ChildState.INSTALLED: frozenset({ChildState.DELETING}),
    ChildState.DELETING: frozenset(),
}


class ChildRekey(enum.Enum):
    IDLE = enum.auto()
    REKEYING = enum.auto()
    COLLIDING = enum.auto()
    REKEYED = enum.auto()


_C = ChildRekey
CHILD_REKEY_MOVES: dict[ChildRekey, frozenset[ChildRekey]] = {
    _C.IDLE: frozenset({_C.REKEYING, _C.REKEYED}),
    _C.REKEYING: frozenset({_C.IDLE, _C.COLLIDING, _C.REKEYED}),
    _C.COLLIDING: frozenset({_C.REKEYED}),
    _C.REKEYED: frozenset({_C.REKEYED}),
}


class EndReason(enum.Enum):
    """Why an IKE SA ends; the value is the events' `reason` text."""

    DELETED = "deleted"  # our Delete was answered (or given up on while deleting)
    DELETED_BY_PEER = "deleted by peer"
    DEAD_PEER = "dead peer"  # an established SA's request went unanswered: DpdFailed
    EXPIRED = "expired"  # the hard lifetime, with a request stuck
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"  # the peer told us so (INFORMATIONAL)
    COOKIE2_MISMATCH = "COOKIE2 mismatch"  # RFC 4555 §3.7
    REDIRECTED = "redirected"  # RFC 5685: following a gateway's REDIRECT
    REDIRECT_LOOP = "REDIRECT_LOOP"  # too many redirects in a row
    REDIRECT = "REDIRECT"  # a redirect we cannot follow (an FQDN, no local address)
    PEER_NOT_RESPONDING = "peer not responding"  # never established, given up
    HALF_OPEN_TIMEOUT = "half-open timeout"
    CANCELLED = "cancelled"  # delete_ike_sa() before it was established
    REFUSED = "refused"  # a NOTIFY from the peer or our check: the event names the NOTIFY
    RETIRED = "retired"  # an SA that already told its end, or no longer has its handle


class ChildEndReason(enum.Enum):
    """Why a Child SA ends on its own (its IKE SA lives on); the value is the
    ChildSaDeleted event's `reason` text. When the IKE SA ends, its Child SAs end with
    the IKE SA's EndReason instead."""

    DELETED = "deleted"  # our Delete(ESP) was answered
    DELETED_BY_PEER = "deleted by peer"  # the peer's Delete(ESP), not after a rekey
    REKEYED = "rekeyed"  # the old SA of a rekey, once its Delete was exchanged
    EXPIRED = "expired"  # the hard lifetime came before a successful rekey
    NOT_FOUND = "CHILD_SA_NOT_FOUND"  # our rekey: the peer has no such Child SA (§3.10.1)


class After(enum.Enum):
    """What is left of an IKE SA once it ended."""

    REMOVE = enum.auto()  # nothing
    LINGER = enum.auto()  # CLOSED: answers retransmitted requests, expires
    DELETE = enum.auto()  # ABANDONED: our Delete(IKE) goes to the peer, then it goes


@dataclass(slots=True, eq=False)
class ChildSa:
    """One Child SA (a pair of ESP SAs) of an IKE SA, by our inbound SPI."""

    config: CompiledChild
    spi_in: int
    spi_out: int
    suite: EspSuite
    transport: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    installed_at: float
    state: ChildState = ChildState.INSTALLED
    rekey: ChildRekey = ChildRekey.IDLE
    rekey_at: float | None = None  # soft lifetime: start a rekey (jittered)
    expire_at: float | None = None  # hard lifetime: delete
    # COLLIDING: the peer's rekey of this SA that we answered while ours was under way
    # (§2.8.1): (its Ni, our Nr, the Child SA it made)
    collision: tuple[bytes, bytes, ChildSa] | None = None
    # rekey responder: the older SA we still send on until the initiator's Delete of it
    # arrives (or switch_at passes); then ChildSaOutboundSwitched
    outbound_from: ChildSa | None = None
    switch_at: float | None = None

    def move(self, state: ChildState) -> None:
        if state is not self.state and state not in _CHILD_MOVES[self.state._value_]:
            raise InvalidTransition(
                f"Child SA {self.spi_in:08x}: {self.state.name} -> {state.name}"
            )
        self.state = state

    def rekey_done(self) -> tuple[bytes, bytes, ChildSa] | None:
        """Our rekey of this SA is over (answered or given up): REKEYING -> IDLE, and
        COLLIDING -> REKEYED (the peer's rekey of it stands). Returns the collision."""
        collision, self.collision = self.collision, None
        if self.rekey is ChildRekey.REKEYING:
            self.rekey_to(ChildRekey.IDLE)
        elif self.rekey is ChildRekey.COLLIDING:
            self.rekey_to(ChildRekey.REKEYED)
        return collision

    def rekey_to(self, rekey: ChildRekey) -> None:
        if rekey is not self.rekey and rekey not in _CHILD_REKEY_MOVES[self.rekey._value_]:
            raise InvalidTransition(
                f"Child SA {self.spi_in:08x} rekey: {self.rekey.name} -> {rekey.name}"
            )
        self.rekey = rekey

    @property
    def closing(self) -> bool:
        """Replaced by a newer SA, or being deleted: no more rekeys or lifetimes."""
        return self.rekey is ChildRekey.REKEYED or self.state is ChildState.DELETING

    @property
    def rekeying(self) -> bool:
        """Our CREATE_CHILD_SA(REKEY_SA) for it is under way."""
        return self.rekey is ChildRekey.REKEYING or self.rekey is ChildRekey.COLLIDING

    @property
    def rekeyed(self) -> bool:
        """A newer Child SA replaced it (by our rekey or the peer's)."""
        return self.rekey is ChildRekey.REKEYED or self.rekey is ChildRekey.COLLIDING


class PendingChild:
    """The Child SA that IKE_AUTH will create (initiator): config, SPI, selectors."""

    __slots__ = ("config", "spi_in", "tsi", "tsr")

    def __init__(
        self,
        config: CompiledChild,
        spi_in: int,
        tsi: tuple[TrafficSelector, ...],
        tsr: tuple[TrafficSelector, ...],
    ) -> None:
        self.config = config
        self.spi_in = spi_in
        self.tsi = tsi
        self.tsr = tsr


@dataclass(slots=True, eq=False)
class ChildRequest:
    """Our CREATE_CHILD_SA request for a new Child SA or to rekey `old` (§1.3.1, §1.3.3)."""

    config: CompiledChild
    spi_in: int
    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]
    ni: bytes
    dh: DhPrivate | None
    old: ChildSa | None
    retried: bool


class MobikeUpdate:
    """Our UPDATE_SA_ADDRESSES under way (RFC 4555 §3.5): its COOKIE2 and the path it leaves."""

    __slots__ = ("cookie2", "old_local", "old_remote")

    def __init__(self, cookie2: bytes, old_local: Endpoint, old_remote: Endpoint) -> None:
        self.cookie2 = cookie2
        self.old_local = old_local
        self.old_remote = old_remote


def _by_value(table: dict[_E, frozenset[_E]]) -> dict[object, tuple[_E, ...]]:
    """A move table keyed by the enums' plain values: the checks then hash an int and
    compare by identity, where an Enum member's own __hash__ is a Python call."""
    return {state._value_: tuple(moves) for state, moves in table.items()}


_STATE_MOVES = _by_value(STATE_MOVES)
_SUCCESSION_MOVES = _by_value(SUCCESSION_MOVES)
_REKEY_MOVES = _by_value(REKEY_MOVES)
_MOBILITY_MOVES = _by_value(MOBILITY_MOVES)
_CHILD_MOVES = _by_value(CHILD_MOVES)
_CHILD_REKEY_MOVES = _by_value(CHILD_REKEY_MOVES)


class IkeSa:
    """One IKE SA. Mutable on purpose (lives for hours, changes on every exchange)."""

    __slots__ = (
        "uid",
        "initiator",
        "state",
        "succession",
        "rekey",
        "mobility",
        "conn",
        "candidates",
        "spi_i",
        "spi_r",
        "local",
        "remote",
        "suite",
        "dh",
        "ni",
        "nr",
        "keys",
        "sk",
        "init_request",
        "init_response",
        "my_next_id",
        "peer_next_id",
        "outstanding",
        "queue",
        "last_response",
        "nat",
        "children",
        "pending_child",
        "cookie",
        "init_retries",
        "timer_at",
        "expire_at",
        "established_at",
        "local_id",
        "remote_id",
        "peer_hints",
        "frag",
        "fragments",
        "rekey_at",
        "hard_at",
        "life_at",
        "rekey_handler",
        "collision",
        "child_requests",
        "child_retries",
        "behind_nat",
        "keepalive_at",
        "peer_addrs",
        "mobike_update",
        "last_inbound",
        "dpd_at",
        "esp_seen",
        "redirect_peer",
        "redirect_self",
        "redirected_from",
    )

    def __init__(
        self, uid: int, initiator: bool, local: Endpoint, remote: Endpoint, *, rekeyed: bool = False
    ) -> None:
        """A new IKE SA; `rekeyed`: made by a rekey (§1.3.2), so ESTABLISHED at once and
        PENDING until it takes over the old SA's handle."""
        self.uid = uid
        self.initiator = initiator
        if rekeyed:
            self.state, self.succession = State.ESTABLISHED, Succession.PENDING
        else:
            self.state = State.INIT_SENT if initiator else State.AUTH_WAIT
            self.succession = Succession.CURRENT
        self.rekey = RekeyState.IDLE
        self.mobility = Mobility.FIXED
        self.conn: CompiledConnection | None = None
        self.candidates: tuple[CompiledConnection, ...] = ()
        self.spi_i = ZERO_SPI
        self.spi_r = ZERO_SPI
        self.local = local
        self.remote = remote
        self.suite: IkeSuite | None = None
        self.dh: DhPrivate | None = None
        self.ni = b""
        self.nr = b""
        self.keys: IkeSaKeys | None = None
        self.sk: SkCipher | None = None
        self.init_request = b""
        self.init_response = b""
        self.my_next_id = 0
        self.peer_next_id = 0
        self.outstanding: Request | None = None
        self.queue: deque[tuple[int, list[Payload], ResponseHandler]] = deque()
        # (message ID, exchange type, bytes) of our last response, for retransmitted requests
        self.last_response: tuple[int, int, Wire] | None = None
        self.nat = False
        self.children: dict[int, ChildSa] = {}
        self.pending_child: PendingChild | None = None
        self.cookie = b""
        self.init_retries = 0
        self.timer_at: float | None = None
        self.expire_at: float | None = None
        self.established_at: float | None = None
        self.local_id: tuple[int, bytes] = (0, b"")
        self.remote_id: tuple[int, bytes] = (0, b"")
        # the peer's SIGNATURE_HASH_ALGORITHMS and CERTREQs (pubkey authentication)
        self.peer_hints: PeerHints | None = None
        self.frag = False  # both sides announced IKEV2_FRAGMENTATION_SUPPORTED
        self.fragments: Fragments | None = None  # the peer's message being reassembled
        # lifetimes (§2.8): rekey at rekey_at, delete at hard_at; life_at is the earliest
        # lifetime event of the SA and its Child SAs (one heap entry per SA)
        self.rekey_at: float | None = None
        self.hard_at: float | None = None
        self.life_at: float | None = None
        # REKEYING/COLLIDING: the response handler of our IKE SA rekey request
        self.rekey_handler: ResponseHandler | None = None
        # COLLIDING: the peer's IKE rekey we answered while ours was under way:
        # (its Ni, our Nr, the PENDING SA it made)
        self.collision: tuple[bytes, bytes, IkeSa] | None = None
        # our CREATE_CHILD_SA requests under way or queued (their SPIs are allocated)
        self.child_requests: list[ChildRequest] = []
        # new Child SAs the peer answered TEMPORARY_FAILURE: (when to try again, config)
        self.child_retries: list[tuple[float, CompiledChild]] = []
        self.behind_nat = False  # our address is translated: we send NAT-T keepalives
        self.keepalive_at: float | None = None
        # MOBIKE (RFC 4555): the peer's additional addresses; UPDATING: our update
        self.peer_addrs: tuple[str, ...] = ()
        self.mobike_update: MobikeUpdate | None = None
        # Dead Peer Detection (§2.4): when a valid message last came from the peer, when
        # to look at the idle time again, the ESP packet count seen then (InboundTraffic)
        self.last_inbound = 0.0
        self.dpd_at: float | None = None
        self.esp_seen = 0
        # redirect (RFC 5685): the peer announced support (we may redirect it); we did
        # (we follow its REDIRECT); the gateway that redirected us and when each redirect
        # of this chain of attempts happened (loop limit)
        self.redirect_peer = False
        self.redirect_self = False
        self.redirected_from: tuple[str, tuple[float, ...]] | None = None

    def __repr__(self) -> str:
        return f"IkeSa({self.uid}, {self.state.public}, {self.spi_i.hex()}_{self.spi_r.hex()})"

    # ------------------------------------------------------------------ transitions

    def move(self, state: State) -> None:
        if state not in _STATE_MOVES[self.state._value_]:
            raise InvalidTransition(f"{self!r}: {self.state.name} -> {state.name}")
        self.state = state

    def succeed(self, succession: Succession) -> None:
        if succession not in _SUCCESSION_MOVES[self.succession._value_]:
            raise InvalidTransition(f"{self!r}: {self.succession.name} -> {succession.name}")
        self.succession = succession

    def rekey_to(self, rekey: RekeyState) -> None:
        if rekey not in _REKEY_MOVES[self.rekey._value_]:
            raise InvalidTransition(f"{self!r} rekey: {self.rekey.name} -> {rekey.name}")
        self.rekey = rekey

    def mobility_to(self, mobility: Mobility) -> None:
        if mobility not in _MOBILITY_MOVES[self.mobility._value_]:
            raise InvalidTransition(f"{self!r} mobility: {self.mobility.name} -> {mobility.name}")
        self.mobility = mobility

    # ------------------------------------------------------------------ views

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.conn.name if self.conn else ""

    @property
    def current(self) -> bool:
        """This SA carries its handle: its changes are events."""
        return self.succession is Succession.CURRENT

    @property
    def mobike(self) -> bool:
        """MOBIKE is in use (both sides announced it, RFC 4555 §3.3)."""
        return self.mobility is not Mobility.FIXED

    @property
    def live(self) -> bool:
        """Established and carrying its handle: API calls and lifetimes act on it."""
        return self.state is State.ESTABLISHED and self.succession is Succession.CURRENT
