"""A thin UDP driver for the sans-IO engine inside a test namespace (until the daemon).

Sockets are made inside the namespace (setns for this thread only, then back), so the
test process itself stays in the host namespace. Time is time.monotonic() unless `clock`
says otherwise (certificate checks need Unix time: pass time.time).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2.netns import popns, pushns

from ike.engine import IkeEngine
from ike.events import ChildSaEstablished, ChildSaFailed, Event, IkeSaFailed


class UdpDriver:
    def __init__(
        self,
        engine: IkeEngine,
        netns: str,
        ip: str,
        ports: Sequence[int] = (500, 4500),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.clock = clock
        self.ip = ip
        self.events: list[Event] = []
        self.poll_interval = 0.05
        # ESP-in-UDP (RFC 3948) arriving on the NAT-T port: kept here, not given to the engine
        self.esp_received: list[tuple[bytes, tuple[str, int]]] = []
        # every IKE datagram handed to the engine: (data, local port, source)
        self.ike_received: list[tuple[bytes, int, tuple[str, int]]] = []
        self.nat_t_port = engine.settings.nat_t_port
        self.socks: dict[int, socket.socket] = {}
        pushns(netns)
        try:
            for port in ports:
                s = socket.socket(
                    socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM
                )
                s.bind((ip, port))
                s.setblocking(False)
                self.socks[port] = s
        except OSError:
            self.close()
            raise
        finally:
            popns()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()

    def __enter__(self) -> UdpDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> float:
        return self.clock()

    def _flush(self) -> None:
        for d in self.engine.datagrams_to_send():
            self.socks[d.local[1]].sendto(d.data, d.remote)
        while (ev := self.engine.next_event()) is not None:
            self.events.append(ev)

    def run_until(self, done: Callable[[list[Event]], bool], timeout: float) -> bool:
        """Pump the engine until done(events) or the timeout; returns done's last value."""
        deadline = self.clock() + timeout
        by_fd = {s.fileno(): (port, s) for port, s in self.socks.items()}
        while True:
            self._flush()
            if done(self.events):
                return True
            now = self.clock()
            if now >= deadline:
                return False
            wake = min(deadline, now + self.poll_interval)  # done() may watch the outside
            t = self.engine.next_timer()
            if t is not None:
                wake = min(wake, t)
            ready, _, _ = select.select(list(by_fd), [], [], max(0.0, wake - now))
            for fd in ready:
                port, s = by_fd[fd]
                while True:
                    try:
                        data, src = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if port == self.nat_t_port and len(data) > 8 and data[:4] != bytes(4):
                        self.esp_received.append((data, (src[0], src[1])))
                        continue
                    self.ike_received.append((data, port, (src[0], src[1])))
                    self.engine.receive_datagram(
                        data, ((self.ip, port), (src[0], src[1])), self.clock()
                    )
            t = self.engine.next_timer()
            if t is not None and t <= self.clock():
                self.engine.handle_timer(self.clock())


def of_type(events: Sequence[Event], cls: type) -> list[Any]:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, cls)]


def settled(events: Sequence[Event]) -> bool:
    """A handshake has an outcome: a Child SA, or a failure."""
    return any(isinstance(e, ChildSaEstablished | ChildSaFailed | IkeSaFailed) for e in events)
