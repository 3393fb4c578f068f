"""EAP-RADIUS (RFC 3579 pass-through): the feature manager that carries the peers' EAP
Responses to the RADIUS server and brings its answers back to the engine.

    EapRadiusRequest    one Access-Request (the conversation's RadiusEapSession keeps
                        the server's State), in a task: the engine never waits; the
                        answer goes in with `engine.eap_relay_answer` and a pump
    IkeSaEstablished / IkeSaDeleted / IkeSaFailed
                        the conversation is dropped (a task still under way cancelled)

The servers are `[gateway.radius.servers.NAME]` (gateway/radius/client.py: one UDP socket
each, retransmission with backoff). A conversation starts at the first server; when it
does not answer the first Access-Request the next one is asked. No answer at all is an
AUTHENTICATION_FAILED that says "RADIUS unreachable", not a wrong password. The shared
secret and the MSK never reach a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config.schema import RadiusConfig
from gateway.control.protocol import ControlError
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.radius import RadiusClient, RadiusEapSession, RadiusError, RadiusServer
from gateway.radius.eap import RadiusEapReply
from ike import events as ev
from ike.cp import VirtualIpAssignment
from ike.ike_eap import RelayAnswer


@dataclass(slots=True)
class _Conversation:
    session: RadiusEapSession
    server: int  # index into the clients
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class RadiusRelay(Feature):
    def __init__(self, daemon: Host, config: RadiusConfig | None) -> None:
        self.d = daemon
        self.config = config
        self.clients: list[RadiusClient] = []
        self._conversations: dict[int, _Conversation] = {}

    async def start(self) -> None:
        c = self.config
        if c is None:
            return
        for server in c.servers:
            client = RadiusClient(
                RadiusServer(server.address, server.secret.value, server.port, server.name),
                retransmit_timeout=c.retransmit_timeout,
                retransmit_base=c.retransmit_base,
                retransmit_tries=c.retransmit_tries,
            )
            try:
                await client.open()
            except RadiusError as exc:  # e.g. no route: its conversations fail, said so
                self.d.report("radius-unusable", logging.ERROR, message=str(exc))
            self.clients.append(client)

    def stop(self) -> None:
        for conv in self._conversations.values():
            if conv.task is not None:
                conv.task.cancel()
        self._conversations.clear()
        for client in self.clients:
            client.abort()

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.EapRadiusRequest():
                self._relay(event)
            case ev.IkeSaEstablished() | ev.IkeSaDeleted() | ev.IkeSaFailed():
                conv = self._conversations.pop(event.ike_sa, None)
                if conv is not None and conv.task is not None and not conv.task.done():
                    conv.task.cancel()
        return None

    def stats(self) -> Mapping[str, Any]:
        if not self.clients:
            return {}
        return {"radius": {c.server.name: asdict(c.stats) for c in self.clients}}

    # ------------------------------------------------------------------ the relay

    def _relay(self, e: ev.EapRadiusRequest) -> None:
        conv = self._conversations.get(e.ike_sa)
        if e.first or conv is None:
            conv = self._conversations[e.ike_sa] = _Conversation(self._session(e), 0)
        loop = self.d.loop
        if loop is None or not self.clients:
            self._answer(e.ike_sa, RelayAnswer(error="no RADIUS server configured"))
            return
        conv.task = loop.create_task(self._round(e, conv))

    def _session(self, e: ev.EapRadiusRequest) -> RadiusEapSession:
        c = self.config
        assert c is not None
        return RadiusEapSession(
            e.identity,
            nas_identifier=c.nas_identifier.encode(),
            nas_ip=ipaddress.ip_address(e.local[0]),
            calling_station_id=f"{e.remote[0]}[{e.remote[1]}]".encode(),
            called_station_id=f"{e.local[0]}[{e.local[1]}]".encode(),
        )

    async def _round(self, e: ev.EapRadiusRequest, conv: _Conversation) -> None:
        while True:
            client = self.clients[conv.server]
            try:
                reply = await client.eap_round(conv.session, e.eap)
            except RadiusError as exc:
                if e.first and conv.server + 1 < len(self.clients):
                    self.d.report(
                        "radius-failover", logging.WARNING, ike_sa=e.ike_sa, error=str(exc)
                    )
                    conv.server += 1
                    conv.session = self._session(e)
                    continue
                self._answer(e.ike_sa, RelayAnswer(error=f"RADIUS unreachable: {exc}"))
                return
            break
        if reply.done and not reply.accepted:
            self.d.report(
                "radius-rejected",
                logging.WARNING,
                connection=e.connection,
                ike_sa=e.ike_sa,
                identity=repr(e.identity.decode("utf-8", "replace")),
                server=client.server.name,
                reply_message=repr(reply.reply_message or ""),
            )
        self._answer(e.ike_sa, _relay_answer(reply))

    def _answer(self, ike_sa: int, answer: RelayAnswer) -> None:
        with contextlib.suppress(ControlError):  # the SA is gone (half-open timeout)
            self.d.engine_call(self.d.engine.eap_relay_answer, ike_sa, answer)
        self.d.pump()


def _relay_answer(reply: RadiusEapReply) -> RelayAnswer:
    offered = None
    if reply.accepted and (reply.framed_ip or reply.framed_ipv6 or reply.dns):
        ip6 = ipaddress.IPv6Interface((reply.framed_ipv6, 128)) if reply.framed_ipv6 else None
        offered = VirtualIpAssignment(reply.framed_ip, ip6, reply.dns)
    return RelayAnswer(
        eap=reply.eap,
        accepted=reply.accepted,
        done=reply.done,
        msk=reply.msk,
        offered=offered,
    )
