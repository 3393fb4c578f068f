"""The IKEv2 engine (RFC 7296), sans-IO: the public API, the datagram pipeline and the
dispatch to the exchange modules, the SA tables and the one timer heap.

Theory of operation
-------------------
The engine owns every IKE SA of one process. It never does I/O and never reads a clock:

* inputs: ``receive_datagram(data, (local, remote), now)`` for each UDP payload received
  on port 500 or 4500, ``handle_timer(now)`` when ``next_timer()`` is due, and the API calls
  ``initiate``, ``delete_ike_sa``, ``delete_child_sa``, ``check_liveness``,
  ``create_child_sa``, ``rekey_child_sa``, ``rekey_ike_sa``, ``redirect_ike_sa``,
  ``update_addresses`` (MOBIKE, ike/mobike.py); injected hooks:
  ``InboundSpiAllocator`` (our ESP SPIs) and ``InboundTraffic`` (ESP counters for DPD);
* outputs, pulled by the caller after every input: ``datagrams_to_send()``,
  ``next_timer()`` and ``next_event()`` (IkeSaEstablished, ChildSaEstablished, ...).

Datagrams go through one pipeline: strip the non-ESP marker on the NAT-T port, decode
the header, find the SA by *our* SPI (responder SPI if the peer set the I flag), then

* responses must answer our one outstanding request (window size 1, RFC 7296 §2.3);
  anything else is dropped and counted;
* requests must carry the next expected message ID; the previous ID is answered from
  the response cache without reprocessing (§2.1); other IDs are dropped;
* everything after IKE_SA_INIT must decrypt and verify (SK payload) before it is looked at.

A request is dispatched through ``_REQUEST_HANDLERS`` keyed by (SA state, exchange type).
A handler returns the response payloads or raises ProtocolError; that exception is turned
into a NOTIFY in exactly one place (``_handle_request``). A response is dispatched to the
callback stored with the request that it answers. Malformed input raises DecodeError
inside the codec and is dropped and counted in ``receive_datagram``; nothing else escapes.

Requests are retransmitted with exponential back-off (timeout * base**n, strongSwan's
defaults 4 s and 1.8) and the SA gives up after ``retransmit_tries`` retransmissions.
Timers are one heap for the whole engine with lazy invalidation (an SA's entry is live
only while it equals ``sa.timer_at``).

The rooms around it, none of which imports the engine back: each is handed the engine as
ike/host.py's ``SaHost`` or ``ExchangeHost``, whose members the engine implements itself
(``send_request``, ``end_sa``, ``emit``, ...: for the modules of ike/, not for callers):

* ike/sa.py: the SA model (``IkeSa``, ``ChildSa``, their state enums and the tables of
  allowed moves). Every IKE SA ends through ``end_sa`` with an ``EndReason``, from which
  the events follow.
* ike/window.py (request window, retransmission, fragments), ike/cookies.py (COOKIE and
  the half-open SAs), ike/nat.py, ike/lifetimes.py (every deadline of an SA folds into one
  heap entry, ``life_at``).
* the exchanges: ike/sa_init.py, ike/ike_auth.py, ike/child_sa.py (Child SAs: in IKE_AUTH,
  CREATE_CHILD_SA, Delete), ike/ike_rekey.py, and the extensions ike/mobike.py and
  ike/redirect.py.

CREATE_CHILD_SA is one row of ``_REQUEST_HANDLERS`` that dispatches on its payloads (an
IKE proposal: ike_rekey; else ike/child_sa.py, which tells a rekey by REKEY_SA); our own
requests carry their state in a closure. What is due on an SA (``_lifetimes_due``:
keepalive, hard lifetime, rekeys, retries, the responder's outbound switch, DPD) and
what to do when a request is given up (``_give_up``) are decided here.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Sequence

from ike import (
    child_sa,
    codec,
    ike_auth,
    ike_rekey,
    lifetimes,
    mobike,
    nat,
    redirect,
    sa_init,
    window,
)
from ike.codec import (
    Delete,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
)
from ike.config import (
    CompiledChild,
    CompiledConnection,
    ConnectionConfig,
    EngineSettings,
    compile_connection,
    format_identity,
)
from ike.constants import (
    NON_ESP_MARKER,
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from ike.cookies import Cookies
from ike.crypto import RandomSource
from ike.errors import DecodeError, LocalError, ProtocolError, ResponseIgnored
from ike.events import (
    Datagram,
    DpdFailed,
    Endpoint,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
)
from ike.hooks import InboundSpiAllocator, InboundTraffic, RandomSpis
from ike.payloads import first, first_notify
from ike.sa import (
    ZERO_SPI,
    After,
    ChildEndReason,
    ChildState,
    EndReason,
    IkeSa,
    PendingChild,
    RekeyState,
    State,
    Succession,
)
from ike.sk import IntegrityError
from ike.stats import ChildSaInfo, EngineStats, IkeSaInfo
from ike.ts import TrafficSelector, ip
from ike.window import Request, ResponseHandler, Wire

__all__ = [
    "IkeEngine",
    "EngineStats",
    "IkeSaInfo",
    "ChildSaInfo",
    "State",
    "InboundSpiAllocator",
    "InboundTraffic",
    "RandomSpis",
]

Addr = tuple[Endpoint, Endpoint]  # (local, remote)


class IkeEngine:
    """Sans-IO IKEv2 endpoint: see the module docstring and docs/ike.md."""

    def __init__(
        self,
        connections: Sequence[ConnectionConfig] = (),
        settings: EngineSettings | None = None,
        *,
        random: RandomSource = os.urandom,
        spis: InboundSpiAllocator | None = None,
        traffic: InboundTraffic | None = None,
        ike_spis: Callable[[], bytes] | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self._traffic = traffic
        self._random = random
        # our IKE SPIs (initiator: SPIi, responder: SPIr, also of a rekeyed IKE SA); the
        # daemon's workers encode their index in them (gateway/workers.py)
        self._ike_spis: Callable[[], bytes] = ike_spis or (lambda: random(8))
        self._conns: dict[str, CompiledConnection] = {}
        self.set_connections(connections)
        self._sas: dict[bytes, IkeSa] = {}
        self._by_uid: dict[int, IkeSa] = {}
        # responder SAs by the initiator's SPI: spots retransmitted (or late duplicate)
        # IKE_SA_INIT requests, also after the SA is established
        self._by_spi_i: dict[bytes, IkeSa] = {}
        self._spis: InboundSpiAllocator = spis if spis is not None else RandomSpis(random)
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()
        # steps a request handler defers until its response is sent (a redirect's Delete)
        self._after_response: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._uids = itertools.count(1)
        # COOKIE secrets and the half-open responder SAs (§2.6)
        self._cookies: Cookies[IkeSa] = Cookies(self.settings, random)
        self.stats = EngineStats()
        # where the request being handled came from (MOBIKE takes its new path from it)
        self._rx_addr: Addr = (("", 0), ("", 0))
        # the host interface (ike/host.py) that the modules of ike/ get: the engine itself
        self.random = random
        self.spis = self._spis
        self.cookies = self._cookies
        self.emit = self._events.append
        self.after_response = self._after_response.append
        self.find_sa = self._sas.get
        self.new_uid = self._uids.__next__

    def set_connections(self, connections: Sequence[ConnectionConfig]) -> None:
        """Replace the connection table (reload). All-or-nothing: LocalError leaves the old
        table. Existing IKE SAs keep the compiled connection they were made with."""
        table: dict[str, CompiledConnection] = {}
        for c in connections:
            if c.name in table:
                raise LocalError(f"connection {c.name!r} is defined twice")
            table[c.name] = compile_connection(c)
        self._conns = table

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        timers = self._timers
        while timers:
            at, _, uid = timers[0]
            sa = self._by_uid.get(uid)
            if sa is not None and sa.timer_at == at:
                return at
            heapq.heappop(timers)
        return None

    # ------------------------------------------------------------------ introspection

    @property
    def connections(self) -> tuple[str, ...]:
        return tuple(self._conns)

    def ike_sas(self) -> list[IkeSaInfo]:
        """Snapshots of every IKE SA (for list-sas); no keys."""
        out = []
        for sa in self._by_uid.values():
            if not sa.current:
                continue  # an old IKE SA after a rekey, on its way out
            enc = sa.nat
            children = tuple(
                ChildSaInfo(
                    c.config.name,
                    c.spi_in,
                    c.spi_out,
                    "transport" if c.transport else "tunnel",
                    enc,
                    c.suite.name,
                    c.local_ts,
                    c.remote_ts,
                    c.installed_at,
                )
                for c in sa.children.values()
            )
            out.append(
                IkeSaInfo(
                    sa.uid,
                    sa.conn.name if sa.conn else None,
                    sa.state.public,
                    sa.initiator,
                    sa.local,
                    sa.remote,
                    format_identity(*sa.local_id) if sa.local_id[0] else "",
                    format_identity(*sa.remote_id) if sa.remote_id[0] else "",
                    sa.spi_i,
                    sa.spi_r,
                    sa.suite.name if sa.suite else None,
                    sa.established_at,
                    children,
                    sa.mobike,
                    sa.peer_addrs,
                )
            )
        return out

    # ------------------------------------------------------------------ API calls

    def initiate(
        self,
        connection: str,
        child: str | None = None,
        now: float = 0.0,
        *,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
    ) -> int:
        """Start IKE_SA_INIT for `connection` (first Child: `child` or the first one).

        `packet_ts`: (source, destination) of the packet that triggered it (a kernel
        ACQUIRE), proposed as the first TSi and TSr before the configured ones (RFC 7296
        §2.9) so a responder that narrows can keep at least that flow.
        Returns the new IKE SA handle. LocalError for an unknown connection/child or one
        without local and remote addresses.
        """
        conn = self._conns.get(connection)
        if conn is None:
            raise LocalError(f"unknown connection {connection!r}")
        ch = conn.child(child)
        if not conn.local_addrs or not conn.remote_addrs:
            raise LocalError(
                f"connection {connection!r} needs local_addrs and remote_addrs to initiate"
            )
        local = (str(conn.local_addrs[0]), conn.config.local_port)
        remote = (str(conn.remote_addrs[0]), conn.config.remote_port)
        return self.start_initiator(conn, ch, local, remote, now, packet_ts=packet_ts).uid

    def start_initiator(
        self,
        conn: CompiledConnection,
        ch: CompiledChild,
        local: Endpoint,
        remote: Endpoint,
        now: float,
        *,
        redirected_from: tuple[str, tuple[float, ...]] | None = None,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
    ) -> IkeSa:
        """A new initiator IKE SA, its IKE_SA_INIT sent (`redirected_from`: where a
        gateway sent us from, ike/redirect.py; `packet_ts` as in initiate())."""
        sa = IkeSa(next(self._uids), True, local, remote)
        sa.conn = conn
        sa.redirected_from = redirected_from
        sa.spi_i = self.new_ike_spi()
        self.add_sa(sa)
        first_i, first_r = ((packet_ts[0],), (packet_ts[1],)) if packet_ts else ((), ())
        sa.pending_child = PendingChild(ch, 0, first_i, first_r)
        sa.ni = self._random(self.settings.nonce_size)
        sa.dh = conn.ike[0].dh[0].generate(self._random)
        sa_init.send_request(self, sa, now)
        return sa

    def redirect_ike_sa(self, ike_sa: int, gateway: str, now: float) -> None:
        """Send the peer of an established IKE SA to `gateway` (an IP address or FQDN;
        RFC 5685 §5): IkeSaRedirected once it answered; the peer then deletes the SA.
        LocalError when the peer did not announce REDIRECT_SUPPORTED."""
        redirect.start(self, self._established_sa(ike_sa), gateway, now)

    def delete_ike_sa(self, ike_sa: int, now: float) -> None:
        """INFORMATIONAL Delete(IKE); a not yet established SA is just dropped."""
        sa = self._sa_by_uid(ike_sa)
        if sa.state is State.ESTABLISHED:
            self.send_ike_delete(sa, now)
        elif sa.state is not State.DELETING:
            self.end_sa(sa, EndReason.CANCELLED, now)

    def delete_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None:
        """INFORMATIONAL Delete(ESP, spi_in); ChildSaDeleted follows the peer's answer."""
        sa = self._sa_by_uid(ike_sa)
        child = sa.children.get(spi_in)
        if child is None or sa.state is not State.ESTABLISHED:
            raise LocalError(f"IKE SA {ike_sa} has no Child SA with inbound SPI {spi_in:08x}")
        child_sa.delete(self, sa, child, now)

    def check_liveness(self, ike_sa: int, now: float) -> None:
        """Empty INFORMATIONAL request (RFC 7296 §1.4); no answer -> IkeSaDeleted 'dead peer'."""
        sa = self._sa_by_uid(ike_sa)
        if sa.state is not State.ESTABLISHED:
            raise LocalError(f"IKE SA {ike_sa} is not established")
        self.send_request(sa, ExchangeType.INFORMATIONAL, [], window.ignore_response, now)

    def update_addresses(
        self, ike_sa: int, local: str | None, remote: str | None, now: float
    ) -> None:
        """MOBIKE (RFC 4555 §3.5): move the IKE SA to a new local and/or remote address
        (None: unchanged) with UPDATE_SA_ADDRESSES; IkeSaMigrated (move the Child SAs)
        or IkeSaMigrateFailed follows. LocalError unless MOBIKE is in use and we are the
        IKE SA's initiator."""
        mobike.start_update(self, self._established_sa(ike_sa), local, remote, now)

    def _sa_by_uid(self, uid: int) -> IkeSa:
        sa = self._by_uid.get(uid)
        if sa is None:
            raise LocalError(f"unknown IKE SA {uid}")
        return sa

    # ------------------------------------------------------------------ input: datagrams

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP payload as received on `addr` = ((local ip, port), (remote ip, port))."""
        self.stats.datagrams_received += 1
        try:
            self._receive(data, addr, now)
        except IntegrityError:
            self.stats.integrity_failures += 1
        except DecodeError:
            self.stats.malformed += 1
        except ProtocolError:
            # a peer error on a path that cannot answer (e.g. in a response): drop it
            self.stats.unexpected += 1

    def _receive(self, data: bytes, addr: Addr, now: float) -> None:
        local, remote = addr
        nat_t = self.settings.nat_t_port
        if local[1] == nat_t or remote[1] == nat_t:
            if data == nat.KEEPALIVE:  # RFC 3948 §2.3
                self.stats.keepalives += 1
                return
            if data[:4] != NON_ESP_MARKER:
                raise DecodeError("no non-ESP marker on the NAT-T port")
            data = data[4:]
        hdr = codec.decode_header(data)
        if hdr.exchange_type == ExchangeType.IKE_SA_INIT and not hdr.is_response:
            if hdr.spi_r != ZERO_SPI or hdr.message_id != 0 or not hdr.is_initiator:
                raise DecodeError("IKE_SA_INIT request with a responder SPI or message ID")
            self._on_init_request(data, hdr, local, remote, now)
            return
        our_spi = hdr.spi_r if hdr.is_initiator else hdr.spi_i
        sa = self._sas.get(our_spi)
        if sa is None:
            self.stats.unknown_spi += 1
            return
        if sa.initiator == hdr.is_initiator:
            raise DecodeError("I flag does not match our role")
        if hdr.is_response:
            self._handle_response(sa, hdr, data, addr, now)
        else:
            self._handle_request(sa, hdr, data, addr, now)

    def _handle_response(
        self, sa: IkeSa, hdr: codec.Header, data: bytes, addr: Addr, now: float
    ) -> None:
        req = sa.outstanding
        if req is None or not window.answers(req, hdr):
            self.stats.unexpected += 1
            return
        msg = codec.decode_message(data, hdr)
        if hdr.exchange_type == ExchangeType.IKE_SA_INIT:
            payloads = msg.payloads
        else:
            if (hdr.spi_i, hdr.spi_r) != (sa.spi_i, sa.spi_r):
                raise DecodeError("SPIs do not match the IKE SA")
            unprotected = window.unprotect(sa, msg, data)
            if unprotected is None:
                return  # more fragments to come (RFC 7383)
            payloads = unprotected
            self._update_path(sa, addr)
            sa.last_inbound = now
        sa.outstanding = None
        sa.timer_at = None
        self._reschedule(sa)
        try:
            req.on_response(self, sa, msg, payloads, data, now)
        except ResponseIgnored:  # as if it never came: keep retransmitting the request
            sa.outstanding = req
            self._reschedule(sa)
            return
        except ProtocolError as exc:
            if sa.state in (State.INIT_SENT, State.AUTH_SENT):
                self.end_sa(sa, EndReason.REFUSED, now, notify=exc.notify.name, detail=str(exc))
            else:
                self.stats.unexpected += 1
        if sa.outstanding is None and sa.queue and sa.state in (State.ESTABLISHED, State.DELETING):
            exchange, payloads2, handler = sa.queue.popleft()
            self.send_request(sa, exchange, payloads2, handler, now)

    def _handle_request(
        self, sa: IkeSa, hdr: codec.Header, data: bytes, addr: Addr, now: float
    ) -> None:
        if (hdr.spi_i, hdr.spi_r) != (sa.spi_i, sa.spi_r):
            raise DecodeError("SPIs do not match the IKE SA")
        cached = window.cached_response(sa, hdr, data)
        if cached is not None:
            if cached:  # a fragmented request's retransmission is answered once
                self.stats.duplicates_answered += 1
                self.send_datagram(*addr, cached)  # to where the request came from (§2.11)
            return
        if hdr.message_id != sa.peer_next_id or sa.state is State.CLOSED:
            self.stats.unexpected += 1
            return
        msg = codec.decode_message(data, hdr)
        handler = _REQUEST_HANDLERS.get((sa.state, hdr.exchange_type))
        try:
            payloads = window.unprotect(sa, msg, data)
        except DecodeError as exc:
            if exc.critical_payload is None:
                raise
            # authenticated, but holds a critical payload we do not know (§2.5)
            handler = None
            payloads = ()
            error: ProtocolError | None = ProtocolError(
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes((exc.critical_payload,))
            )
        else:
            error = None
        if payloads is None:
            return  # more fragments to come (RFC 7383)
        self._update_path(sa, addr)
        self._rx_addr = addr
        sa.last_inbound = now
        sa.peer_next_id += 1
        response: list[Payload] = []
        if error is None:
            if handler is None:
                if hdr.exchange_type == ExchangeType.CREATE_CHILD_SA:
                    # we are closing this IKE SA (§2.25): try again on the new one
                    error = ProtocolError(NotifyType.TEMPORARY_FAILURE)
                else:
                    error = ProtocolError(NotifyType.INVALID_SYNTAX, "unexpected exchange")
            else:
                try:
                    response = handler(self, sa, msg, payloads, data, now)
                except ProtocolError as exc:
                    error = exc
        if error is not None:
            response = [Notify(error.notify, error.data)]
        out = window.protect(
            sa, self.settings, hdr.exchange_type, hdr.message_id, response, is_response=True
        )
        sa.last_response = (hdr.message_id, hdr.exchange_type, out)
        self.send_datagram(*addr, out)  # to where the request came from (RFC 7296 §2.11)
        while self._after_response:  # what a handler left for after its answer
            self._after_response.popleft()()
        if sa.state is State.CLOSED:
            # linger to answer a retransmitted request whose response got lost
            self.set_expiry(sa, now + self.settings.half_open_timeout)

    def _update_path(self, sa: IkeSa, addr: Addr) -> None:
        """After an authenticated message: follow NAT mappings and the float to 4500 (§2.23).
        Not with MOBIKE: then only UPDATE_SA_ADDRESSES moves the IKE SA (RFC 4555 §3.8)."""
        if addr != (sa.local, sa.remote) and not sa.mobike:
            sa.local, sa.remote = addr

    # ------------------------------------------------------------------ input: timers

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, uid = heapq.heappop(timers)
            sa = self._by_uid.get(uid)
            if sa is None or sa.timer_at != at:
                continue
            sa.timer_at = None
            req = sa.outstanding
            if req is not None and req.deadline <= now:
                if not window.retransmit(req, self.settings, now):
                    self._give_up(sa, now)
                    continue
                self.stats.retransmits += 1
                self.send_datagram(sa.local, sa.remote, req.data)
            if sa.expire_at is not None and sa.expire_at <= now:
                if sa.state is State.CLOSED or not sa.current:
                    self.end_sa(sa, EndReason.RETIRED, now)  # its linger is over
                else:
                    self.end_sa(sa, EndReason.HALF_OPEN_TIMEOUT, now)
                continue
            if sa.life_at is not None and sa.life_at <= now:
                self._lifetimes_due(sa, now)
            self._reschedule(sa)

    def _reschedule(self, sa: IkeSa) -> None:
        at = sa.outstanding.deadline if sa.outstanding else None
        if sa.expire_at is not None and (at is None or sa.expire_at < at):
            at = sa.expire_at
        if sa.life_at is not None and (at is None or sa.life_at < at):
            at = sa.life_at
        if at is not None and at != sa.timer_at:
            sa.timer_at = at
            heapq.heappush(self._timers, (at, next(self._seq), sa.uid))
        elif at is None:
            sa.timer_at = None

    def set_expiry(self, sa: IkeSa, at: float | None) -> None:
        sa.expire_at = at
        self._reschedule(sa)

    def _give_up(self, sa: IkeSa, now: float) -> None:
        if not sa.current:  # an old IKE SA whose Delete went unanswered
            reason = EndReason.RETIRED
        elif sa.state is State.ESTABLISHED:
            self.stats.dead_peers += 1
            reason = EndReason.DEAD_PEER
        elif sa.state is State.DELETING:
            reason = EndReason.DELETED
        else:
            reason = EndReason.PEER_NOT_RESPONDING
        self.end_sa(sa, reason, now)

    # ------------------------------------------------------------------ sending

    def send_datagram(self, local: Endpoint, remote: Endpoint, data: Wire) -> None:
        if type(data) is tuple:  # SKF fragments of one message
            for fragment in data:
                self.send_datagram(local, remote, fragment)
            return
        assert isinstance(data, bytes)
        nat_t = self.settings.nat_t_port
        if local[1] == nat_t or remote[1] == nat_t:
            data = NON_ESP_MARKER + data
        self.stats.datagrams_sent += 1
        self._out.append(Datagram(data, local, remote))

    def send_request(
        self,
        sa: IkeSa,
        exchange: int,
        payloads: list[Payload],
        on_response: ResponseHandler,
        now: float,
    ) -> None:
        if sa.outstanding is not None:
            sa.queue.append((exchange, payloads, on_response))
            return
        mid = sa.my_next_id
        sa.my_next_id += 1
        data = window.protect(sa, self.settings, exchange, mid, payloads, is_response=False)
        sa.outstanding = Request(
            exchange, mid, data, on_response, now + self.settings.retransmit_timeout
        )
        self._reschedule(sa)
        self.send_datagram(sa.local, sa.remote, data)

    def send_first(self, sa: IkeSa, data: bytes, on_response: ResponseHandler, now: float) -> None:
        """Our unprotected IKE_SA_INIT request: message ID 0, retransmitted as any other."""
        sa.my_next_id = 1
        sa.outstanding = Request(
            ExchangeType.IKE_SA_INIT, 0, data, on_response, now + self.settings.retransmit_timeout
        )
        self._reschedule(sa)
        self.send_datagram(sa.local, sa.remote, data)

    def send_queued(self, sa: IkeSa, now: float) -> None:
        if sa.outstanding is None and sa.queue:
            exchange, payloads, handler = sa.queue.popleft()
            self.send_request(sa, exchange, payloads, handler, now)

    # ------------------------------------------------------------------ SA bookkeeping

    def _on_init_request(
        self, data: bytes, hdr: codec.Header, local: Endpoint, remote: Endpoint, now: float
    ) -> None:
        old = self._by_spi_i.get(hdr.spi_i)
        if old is not None:
            # retransmitted IKE_SA_INIT: answer from the cache, never make a second SA (a
            # late duplicate after IKE_AUTH, or another peer reusing the SPI, is dropped)
            cached = old.last_response
            if old.state is State.AUTH_WAIT and old.init_request == data and cached is not None:
                self.stats.duplicates_answered += 1
                self.send_datagram(local, remote, cached[2])
            else:
                self.stats.unexpected += 1
            return
        try:
            msg = codec.decode_message(data, hdr)
        except DecodeError as exc:
            if exc.critical_payload is None:
                raise
            sa_init.send_error(
                self,
                hdr,
                Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((exc.critical_payload,))),
                local,
                remote,
            )
            return
        sa = sa_init.respond(self, msg, hdr, data, local, remote, now)
        if sa is not None:
            self.add_sa(sa)
            self._by_spi_i[sa.spi_i] = sa

    def add_sa(self, sa: IkeSa) -> None:
        self._sas[sa.spi_i if sa.initiator else sa.spi_r] = sa  # our SPI
        self._by_uid[sa.uid] = sa

    def swap_handles(self, old: IkeSa, new: IkeSa) -> None:
        new.uid, old.uid = old.uid, new.uid
        self._by_uid[new.uid] = new
        self._by_uid[old.uid] = old

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self._ike_spis()
            if spi != ZERO_SPI and spi not in self._sas:
                return spi

    def _release_pending(self, sa: IkeSa) -> None:
        pending = sa.pending_child
        if pending is not None and pending.spi_in:
            self._spis.release(pending.spi_in)
        sa.pending_child = None

    def end_sa(
        self,
        sa: IkeSa,
        reason: EndReason,
        now: float,
        *,
        after: After = After.REMOVE,
        detail: str = "",
        notify: str = "",
        conn: CompiledConnection | None = None,
    ) -> None:
        """The one way an IKE SA ends (ike/sa.py): the events that `reason` calls for,
        then what `after` leaves of it. `notify` names the NOTIFY of a REFUSED end;
        `detail` says why in words (IkeSaFailed); `conn` is the connection a failure is
        about when the SA has none yet (a responder that could not authenticate)."""
        self._cookies.half_open.discard(sa)
        established = sa.established_at is not None
        silent = (
            not sa.current
            or sa.state is State.CLOSED  # it told its end already
            or (reason is EndReason.REDIRECTED and not established)  # IkeSaRedirected did
        )
        if not silent:
            text = notify if reason is EndReason.REFUSED else reason.value
            if not established:
                name = conn.name if conn is not None else (sa.conn.name if sa.conn else None)
                detail = "" if detail == text else detail
                self._events.append(IkeSaFailed(sa.uid, name, sa.remote, text, now, detail))
            else:
                self._children_end(sa, text, now, dead=reason is EndReason.DEAD_PEER)
                self._events.append(IkeSaDeleted(sa.uid, sa.name, sa.spi_i, sa.spi_r, text, now))
        if after is After.REMOVE:
            self._forget(sa)
            return
        sa.outstanding = None
        sa.queue.clear()
        if after is After.LINGER:  # answers retransmitted requests, then expires
            sa.move(State.CLOSED)
            return
        # ABANDONED: no further events; our Delete goes to the peer, then it goes
        sa.succeed(Succession.ABANDONED)
        self._release_pending(sa)
        sa.rekey_at = sa.hard_at = sa.dpd_at = sa.keepalive_at = sa.life_at = None
        self.send_ike_delete(sa, now)

    def _children_end(self, sa: IkeSa, reason: str, now: float, *, dead: bool) -> None:
        """An established IKE SA ends: ChildSaDeleted for each of its Child SAs and, when
        the peer stopped answering, DpdFailed naming each Child's dpd_action."""
        actions = {c.config.name: c.config.config.dpd_action for c in sa.children.values()}
        for child in sa.children.values():
            child.outbound_from = child.switch_at = None  # everything goes: no switch
        for child in list(sa.children.values()):
            child_sa.deleted(self, sa, child, reason, now)
        if dead:
            self._events.append(DpdFailed(sa.uid, sa.name, sa.remote, tuple(actions.items()), now))

    def _forget(self, sa: IkeSa) -> None:
        """Out of every table, its SPIs released (end_sa's After.REMOVE)."""
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        self._by_uid.pop(sa.uid, None)
        if not sa.initiator and self._by_spi_i.get(sa.spi_i) is sa:
            del self._by_spi_i[sa.spi_i]
        for spi in sa.children:
            self._spis.release(spi)
        sa.children.clear()
        for req in sa.child_requests:
            self._spis.release(req.spi_in)
        sa.child_requests.clear()
        self._release_pending(sa)
        sa.timer_at = None

    # ------------------------------------------------------------------ IKE_SA_INIT

    def connections_for(self, local: Endpoint, remote: Endpoint) -> tuple[CompiledConnection, ...]:
        lip, rip = ip(local[0]), ip(remote[0])
        return tuple(
            c
            for c in self._conns.values()
            if (not c.local_addrs or lip in c.local_addrs)
            and (not c.remote_addrs or rip in c.remote_addrs)
        )

    # ------------------------------------------------------------------ IKE_AUTH

    # ------------------------------------------------------------------ INFORMATIONAL

    def _on_informational_request(
        self, sa: IkeSa, msg: Message, payloads: tuple[Payload, ...], data: bytes, now: float
    ) -> list[Payload]:
        out: list[Payload] = mobike.on_informational(self, sa, payloads, self._rx_addr, now)
        deleted_spis: list[bytes] = []
        delete_ike = False
        for p in payloads:
            if type(p) is Delete:
                if p.protocol == ProtocolId.IKE:
                    delete_ike = True
                elif p.protocol == ProtocolId.ESP and p.spi_size == 4:
                    deleted_spis += child_sa.on_peer_delete(self, sa, p.spis, now)
            elif type(p) is Notify and p.type == NotifyType.AUTHENTICATION_FAILED:
                self.stats.auth_failures += 1
                self.end_sa(sa, EndReason.AUTHENTICATION_FAILED, now, after=After.LINGER)
                return []
        if delete_ike:
            if sa.collision is not None:  # the peer won our IKE rekey collision (§2.8.2)
                theirs, sa.collision = sa.collision[2], None
                sa.rekey_to(RekeyState.REKEYING)
                ike_rekey.take_over(self, sa, theirs, now)
            self.end_sa(sa, EndReason.DELETED_BY_PEER, now, after=After.LINGER)
            return []
        moved = first_notify(payloads, NotifyType.REDIRECT)
        if moved is not None and sa.live:
            redirect.on_informational(self, sa, moved, now)  # RFC 5685 §5
        if deleted_spis:
            out.append(Delete(ProtocolId.ESP, 4, tuple(deleted_spis)))
        return out

    def _on_delete_ike_response(
        self, sa: IkeSa, msg: Message, payloads: tuple[Payload, ...], data: bytes, now: float
    ) -> None:
        self.end_sa(sa, EndReason.DELETED, now)

    def _retry_delay(self) -> float:
        return lifetimes.retry_delay(self._random)

    def _start_ike_lifetime(self, sa: IkeSa, now: float) -> None:
        lifetimes.start_ike(sa, self.settings, self._random, now)
        self.lifetimes_changed(sa)

    def lifetimes_changed(self, sa: IkeSa) -> None:
        """life_at = the earliest lifetime deadline of the SA and its Child SAs."""
        sa.life_at = lifetimes.earliest(sa)
        self._reschedule(sa)

    def _lifetimes_due(self, sa: IkeSa, now: float) -> None:
        if not sa.live:
            sa.life_at = None
            return
        if sa.keepalive_at is not None and sa.keepalive_at <= now:
            # NAT-T keepalive (RFC 3948 §2.3): one 0xFF byte, no non-ESP marker
            self.stats.keepalives_sent += 1
            self._out.append(Datagram(nat.KEEPALIVE, sa.local, sa.remote))
            sa.keepalive_at = now + self.settings.keepalive_interval
        if sa.hard_at is not None and sa.hard_at <= now:
            sa.rekey_at = sa.hard_at = sa.life_at = None
            if sa.outstanding is None:
                self.delete_ike_sa(sa.uid, now)  # tell the peer; IkeSaDeleted follows
            else:  # stuck behind an unanswered request: the SA ends now
                self.end_sa(sa, EndReason.EXPIRED, now)
            return
        if sa.rekey_at is not None and sa.rekey_at <= now:
            sa.rekey_at = None
            if sa.rekey is RekeyState.IDLE:
                ike_rekey.start(self, sa, None, now)
        if sa.child_retries:
            due = [ch for t, ch in sa.child_retries if t <= now]
            sa.child_retries = [(t, ch) for t, ch in sa.child_retries if t > now]
            for ch in due:
                self.create_child_sa(sa.uid, ch.name, now)
        for child in list(sa.children.values()):
            if child.switch_at is not None and child.switch_at <= now:
                child_sa.switch_outbound(self, sa, child, "timeout", now)
            if child.closing:
                continue
            if child.expire_at is not None and child.expire_at <= now:
                # the hard lifetime: gone now (the kernel drops it too), the peer is told
                child_sa.deleted(self, sa, child, ChildEndReason.EXPIRED, now)
                child_sa.send_delete(self, sa, child.spi_in, now)
            elif child.rekey_at is not None and child.rekey_at <= now:
                child.rekey_at = None
                if not child.rekeying:
                    child_sa.start_rekey(self, sa, child, now)
        if sa.dpd_at is not None and sa.dpd_at <= now:
            self._dpd_due(sa, now)
        self.lifetimes_changed(sa)

    def _dpd_due(self, sa: IkeSa, now: float) -> None:
        """Dead Peer Detection (RFC 7296 §2.4, strongSwan's idle-time DPD): nothing from
        the peer for dpd_delay, neither an IKE message nor ESP on its Child SAs (asked
        of InboundTraffic only now, so traffic costs nothing per packet): send an empty
        INFORMATIONAL. Its retransmissions failing makes the peer dead (`_give_up`). An
        exchange already under way tests the peer the same way: no second check."""
        if not lifetimes.dpd_check_due(sa, self._traffic, now):
            return
        if sa.outstanding is None and not sa.queue:
            self.stats.dpd_probes += 1
            self.send_request(sa, ExchangeType.INFORMATIONAL, [], window.ignore_response, now)

    # ------------------------------------------------------------------ CREATE_CHILD_SA

    def create_child_sa(
        self,
        ike_sa: int,
        child: str | None = None,
        now: float = 0.0,
        *,
        packet_ts: tuple[TrafficSelector, TrafficSelector] | None = None,
    ) -> None:
        """An additional Child SA on an established IKE SA (§1.3.1): ChildSaEstablished
        or ChildSaFailed follows. `child` names the connection's Child config;
        `packet_ts` as in initiate()."""
        sa = self._established_sa(ike_sa)
        assert sa.conn is not None
        child_sa.start_create(self, sa, sa.conn.child(child), packet_ts, now)

    def rekey_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None:
        """Rekey the Child SA with inbound SPI `spi_in` now (§1.3.3), e.g. because a
        byte or packet soft limit was reached: ChildSaRekeyed follows. A Child SA being
        rekeyed or deleted already is left alone."""
        sa = self._established_sa(ike_sa)
        child = sa.children.get(spi_in)
        if child is None or child.rekeyed:
            raise LocalError(f"IKE SA {ike_sa} has no Child SA with inbound SPI {spi_in:08x}")
        if not child.rekeying and child.state is not ChildState.DELETING:
            child_sa.start_rekey(self, sa, child, now)

    def rekey_ike_sa(self, ike_sa: int, now: float) -> None:
        """Rekey the IKE SA (§1.3.2): IkeSaRekeyed follows; the handle stays."""
        sa = self._established_sa(ike_sa)
        if sa.rekey is RekeyState.IDLE:
            ike_rekey.start(self, sa, None, now)

    def _established_sa(self, uid: int) -> IkeSa:
        sa = self._sa_by_uid(uid)
        if not sa.live:
            raise LocalError(f"IKE SA {uid} is not established")
        return sa

    def _on_create_child_request(
        self, sa: IkeSa, msg: Message, payloads: tuple[Payload, ...], data: bytes, now: float
    ) -> list[Payload]:
        assert sa.conn is not None
        if not sa.current:
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "this IKE SA was rekeyed")
        sa_p = first(payloads, SecurityAssociation)
        nonce = first(payloads, Nonce)
        ke_p = first(payloads, KeyExchange)
        ke = ke_p if isinstance(ke_p, KeyExchange) else None
        if not isinstance(sa_p, SecurityAssociation) or not isinstance(nonce, Nonce):
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA without SA or Ni")
        if sa_p.proposals and sa_p.proposals[0].protocol == ProtocolId.IKE:
            return ike_rekey.respond(self, sa, sa_p, nonce.data, ke, now)
        if sa.rekey is not RekeyState.IDLE:  # Child SAs wait for the new IKE SA (§2.25)
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "rekeying the IKE SA")
        return child_sa.respond_create(self, sa, sa_p, nonce, ke, payloads, now)

    # ------------------------------------------------------------------ IKE SA rekey (§1.3.2)

    def send_ike_delete(self, sa: IkeSa, now: float) -> None:
        """INFORMATIONAL Delete(IKE): IkeSaDeleted "deleted" follows (none if superseded)."""
        sa.move(State.DELETING)
        self.send_request(
            sa,
            ExchangeType.INFORMATIONAL,
            [Delete(ProtocolId.IKE, 0, ())],
            IkeEngine._on_delete_ike_response,
            now,
        )


RequestHandler = Callable[
    [IkeEngine, IkeSa, Message, tuple[Payload, ...], bytes, float], list[Payload]
]

# The responder side of the state machine as data: (SA state, exchange) -> the handler
# of the request, returning the answer's payloads (or raising ProtocolError).
_REQUEST_HANDLERS: dict[tuple[State, int], RequestHandler] = {
    (State.AUTH_WAIT, ExchangeType.IKE_AUTH): ike_auth.on_request,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL): IkeEngine._on_informational_request,
    (State.DELETING, ExchangeType.INFORMATIONAL): IkeEngine._on_informational_request,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): IkeEngine._on_create_child_request,
}
