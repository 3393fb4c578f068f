"""An asyncio RADIUS client for Access-Requests: one UDP socket per server, up to 256
requests in flight (the Identifier), retransmission with backoff and a final timeout.

Retransmissions repeat the request byte for byte (same Identifier and Request
Authenticator, RFC 5080 §2.2.1). A reply is matched by Identifier and taken only when
both its authenticators verify (codec.verify_reply); anything else is dropped, counted and
logged without content. The shared secret never reaches a log, an error or a repr.

The timing follows strongSwan's eap-radius plugin: attempt n waits
retransmit_timeout * retransmit_base**n, `retransmit_tries` attempts in all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.radius.codec import (
    HEADER_LEN,
    Attribute,
    Code,
    RadiusDecodeError,
    RadiusError,
    RadiusPacket,
    build_access_request,
    verify_reply,
)
from gateway.radius.eap import RadiusEapReply, RadiusEapSession

log = logging.getLogger("gateway.radius")

DEFAULT_PORT = 1812
# strongSwan's eap-radius defaults (strongswan.conf charon.plugins.eap-radius.*)
RETRANSMIT_TIMEOUT = 2.0
RETRANSMIT_BASE = 1.4
RETRANSMIT_TRIES = 4
RandomSource = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class RadiusServer:
    """One server (strongswan.conf `eap-radius.servers.NAME`)."""

    address: str
    secret: bytes = field(repr=False)
    port: int = DEFAULT_PORT
    name: str = "radius"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError(f"RADIUS server {self.name}: empty shared secret")

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.name} ({host}:{self.port})"


@dataclass(slots=True)
class RadiusStats:
    requests: int = 0
    retransmits: int = 0
    timeouts: int = 0
    replies: int = 0
    dropped: int = 0  # replies that failed their checks or matched nothing


@dataclass(slots=True)
class _Pending:
    data: bytes
    authenticator: bytes
    future: asyncio.Future[RadiusPacket]


class RadiusClient:
    def __init__(
        self,
        server: RadiusServer,
        *,
        retransmit_timeout: float = RETRANSMIT_TIMEOUT,
        retransmit_base: float = RETRANSMIT_BASE,
        retransmit_tries: int = RETRANSMIT_TRIES,
        random: RandomSource = os.urandom,
    ) -> None:
        if retransmit_tries < 1 or retransmit_timeout <= 0 or retransmit_base < 1:
            raise ValueError("RADIUS retransmission needs tries >= 1, timeout > 0, base >= 1")
        self.server = server
        self._timeout = retransmit_timeout
        self._base = retransmit_base
        self._tries = retransmit_tries
        self._random = random
        self._pending: dict[int, _Pending] = {}
        self._next_id = random(1)[0]
        self._transport: asyncio.DatagramTransport | None = None
        self.stats = RadiusStats()

    async def open(self, sock: socket.socket | None = None) -> None:
        """Connect the UDP socket (or use `sock`, e.g. one made in another namespace)."""
        if sock is None:
            infos = socket.getaddrinfo(
                self.server.address, self.server.port, type=socket.SOCK_DGRAM
            )
            family = infos[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.server.address, self.server.port))
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except OSError as exc:
            sock.close()
            raise RadiusError(f"RADIUS server {self.server.where}: {exc.strerror}") from None
        self._transport = transport

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Close now (from synchronous code): requests in flight are cancelled."""
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> RadiusClient:
        if self._transport is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def access_request(self, attributes: Sequence[Attribute]) -> tuple[RadiusPacket, bytes]:
        """Send an Access-Request; the verified reply and the Request Authenticator it was
        checked against (needed to decrypt MS-MPPE keys). RadiusError when no valid reply
        arrives in time."""
        transport = self._transport
        if transport is None:
            raise RadiusError(f"RADIUS client for {self.server.where} is not open")
        identifier = self._allocate()
        authenticator = self._random(16)
        data = build_access_request(identifier, authenticator, attributes, self.server.secret)
        future: asyncio.Future[RadiusPacket] = asyncio.get_running_loop().create_future()
        self._pending[identifier] = _Pending(data, authenticator, future)
        self.stats.requests += 1
        try:
            wait = self._timeout
            for attempt in range(self._tries):
                if attempt:
                    self.stats.retransmits += 1
                    log.debug("%s: retransmitting Access-Request %d", self.server.where, identifier)
                transport.sendto(data)
                try:
                    packet = await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    wait *= self._base
                    continue
                return packet, authenticator
            self.stats.timeouts += 1
            raise RadiusError(
                f"RADIUS server {self.server.where}: no valid answer after {self._tries} tries"
            )
        finally:
            del self._pending[identifier]
            if not future.done():
                future.cancel()

    async def eap_round(self, session: RadiusEapSession, eap_response: bytes) -> RadiusEapReply:
        """Relay one EAP Response and read the server's answer."""
        packet, authenticator = await self.access_request(session.attributes(eap_response))
        try:
            return session.reply(packet, authenticator, self.server.secret)
        except RadiusDecodeError as exc:
            raise RadiusError(f"RADIUS server {self.server.where}: {exc}") from None

    def _allocate(self) -> int:
        for _ in range(256):
            identifier = self._next_id
            self._next_id = (self._next_id + 1) & 0xFF
            if identifier not in self._pending:
                return identifier
        raise RadiusError(f"RADIUS server {self.server.where}: 256 requests outstanding")

    def _received(self, data: bytes) -> None:
        if len(data) < HEADER_LEN:
            self._drop("a datagram too short for RADIUS")
            return
        pending = self._pending.get(data[1])
        if pending is None or pending.future.done():
            self._drop(f"a reply to no outstanding request (Identifier {data[1]})")
            return
        try:
            packet = verify_reply(data, pending.authenticator, self.server.secret)
        except RadiusDecodeError as exc:
            self._drop(f"reply {data[1]}: {exc}")
            return
        self.stats.replies += 1
        log.debug(
            "%s: %s for request %d",
            self.server.where,
            Code(packet.code).name,
            packet.identifier,
        )
        pending.future.set_result(packet)

    def _drop(self, what: str) -> None:
        self.stats.dropped += 1
        log.warning("%s: dropped %s", self.server.where, what)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: RadiusClient) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._client._received(data)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable on the connected socket: retransmission covers it
        log.debug("%s: %s", self._client.server.where, exc)
