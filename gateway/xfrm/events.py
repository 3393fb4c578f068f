"""Kernel XFRM events for the daemon: EXPIRE, ACQUIRE, POLEXPIRE, MIGRATE, DELSA.

A netlink socket joined to the multicast groups, read without blocking. In the daemon:

    async with XfrmEventReader(groups=COUNTER_GROUPS) as events:
        async for event in events:
            ...  # SaExpired(hard=False) -> rekey, SaExpired(hard=True) -> delete,
                 # Acquire -> initiate, SaDeleted -> book its final counters,
                 # EventsLost -> reconcile

Final counters: a hard EXPIRE carries the state as the kernel removes it at its hard
lifetime, and a DELSA notification (group XFRMNLGRP_SA, in COUNTER_GROUPS) carries the
whole state as a DELSA request (ours or anyone's) deleted it: bytes, packets, replay and
integrity counts of the last packet. So
traffic between a state's last scrape and its deletion is not lost. The SA group also
sends NEWSA/UPDSA for every install; they are skipped by type before any decoding.
Note that XfrmManager.migrate() deletes and re-adds each state (same SPI, counters
carried over): a SaDeleted followed by the state living on under the same SPI.

Outside asyncio (tests, tools) `read_available()` drains what is queued.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from dataclasses import dataclass
from typing import Any

from gateway.xfrm import netlink as nl
from gateway.xfrm.channel import open_xfrm_socket
from gateway.xfrm.model import PolicyInfo, SaInfo, Selector, addr_from


@dataclass(frozen=True, slots=True)
class SaExpired:
    """A state reached its soft (rekey now) or hard (it is gone) lifetime."""

    sa: SaInfo
    hard: bool


@dataclass(frozen=True, slots=True)
class SaDeleted:
    """A state was deleted (XFRM_MSG_DELSA): `sa` is the state as it was at that moment,
    with its final cur_bytes/cur_packets, replay_errors, replay_window_errors and
    integrity_failed."""

    sa: SaInfo


@dataclass(frozen=True, slots=True)
class Acquire:
    """Traffic hit a policy with no state: the kernel asks for a Child SA (RFC 4301 §4.4)."""

    reqid: int
    src: object
    dst: object
    selector: Selector
    policy_index: int
    policy_dir: int
    seq: int


@dataclass(frozen=True, slots=True)
class PolicyExpired:
    policy: PolicyInfo
    hard: bool


@dataclass(frozen=True, slots=True)
class Migrate:
    selector: Selector
    direction: int
    moves: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class EventsLost:
    """The socket overflowed (ENOBUFS): some events are gone, resynchronise."""


XfrmEvent = SaExpired | SaDeleted | Acquire | PolicyExpired | Migrate | EventsLost

DEFAULT_GROUPS = (nl.XFRMNLGRP_ACQUIRE, nl.XFRMNLGRP_EXPIRE, nl.XFRMNLGRP_MIGRATE)
COUNTER_GROUPS = (*DEFAULT_GROUPS, nl.XFRMNLGRP_SA)  # + DELSA with the final counters
EVENT_TYPES = frozenset(
    {
        nl.XFRM_MSG_EXPIRE,
        nl.XFRM_MSG_ACQUIRE,
        nl.XFRM_MSG_POLEXPIRE,
        nl.XFRM_MSG_MIGRATE,
        nl.XFRM_MSG_DELSA,
    }
)
_HEADER = struct.Struct("=IHHII")


def decode_event(msg: Any) -> XfrmEvent | None:
    mtype = msg["header"]["type"]
    if mtype == nl.XFRM_MSG_EXPIRE:
        return SaExpired(SaInfo.from_msg(msg, "state_"), bool(msg["hard"]))
    if mtype == nl.XFRM_MSG_DELSA:
        state = msg.get_attr("XFRMA_SA")
        if state is None:  # a DELSA request, not the kernel's notification
            return None
        attrs = [a for a in msg.get("attrs") or [] if a[0] != "XFRMA_SA"]
        return SaDeleted(SaInfo.from_msg(state, attrs=attrs))
    if mtype == nl.XFRM_MSG_ACQUIRE:
        fam = msg["policy_sel_family"] or msg["sel_family"]
        tmpl = msg.get_attr("XFRMA_TMPL")
        reqid = tmpl["templates"][0]["reqid"] if tmpl and tmpl["templates"] else 0
        outer = fam
        if tmpl and tmpl["templates"] and tmpl["templates"][0]["family"]:
            outer = tmpl["templates"][0]["family"]
        return Acquire(
            reqid=reqid,
            src=addr_from(msg["saddr"], outer),
            dst=addr_from(msg["id_daddr"], outer),
            selector=Selector.from_msg(msg, "sel_"),
            policy_index=msg["policy_index"],
            policy_dir=msg["policy_dir"],
            seq=msg["seq"],
        )
    if mtype == nl.XFRM_MSG_POLEXPIRE:
        return PolicyExpired(PolicyInfo.from_msg(msg, "pol_"), bool(msg["hard"]))
    if mtype == nl.XFRM_MSG_MIGRATE:
        mig = msg.get_attr("XFRMA_MIGRATE")
        return Migrate(
            Selector.from_msg(msg, "sel_"), msg["dir"], tuple(mig["migrate"] if mig else ())
        )
    return None


class XfrmEventReader:
    def __init__(self, netns: str | None = None, groups: tuple[int, ...] = DEFAULT_GROUPS):
        self.sock = open_xfrm_socket(netns, groups)
        self.sock.setblocking(False)
        self.marshal = nl.MarshalXfrm()

    def close(self) -> None:
        self.sock.close()

    def _decode(self, data: bytes) -> list[XfrmEvent]:
        """Events of one datagram. Messages of other types (the SA group's NEWSA/UPDSA
        for every install) are skipped by their header, never decoded."""
        out = []
        offset, n = 0, len(data)
        while offset + 16 <= n:
            length, mtype, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
            if length < 16:
                break
            if mtype in EVENT_TYPES:
                for msg in self.marshal.parse(data[offset : offset + length]):
                    event = decode_event(msg)
                    if event is not None:
                        out.append(event)
            offset += (length + 3) & ~3
        return out

    def read_available(self) -> list[XfrmEvent]:
        events: list[XfrmEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                events.append(EventsLost())
                continue
            events.extend(self._decode(data))

    async def next_events(self) -> list[XfrmEvent]:
        """Wait for the next datagram and return its events (possibly several)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, 1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                return [EventsLost()]
            events = self._decode(data)
            if events:
                return events

    def __aiter__(self) -> XfrmEventReader:
        self._pending: list[XfrmEvent] = []
        return self

    async def __anext__(self) -> XfrmEvent:
        if not getattr(self, "_pending", None):
            self._pending = await self.next_events()
        return self._pending.pop(0)

    async def __aenter__(self) -> XfrmEventReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "XfrmEventReader",
    "SaExpired",
    "SaDeleted",
    "COUNTER_GROUPS",
    "Acquire",
    "PolicyExpired",
    "Migrate",
    "EventsLost",
    "XfrmEvent",
    "decode_event",
    "socket",
]
