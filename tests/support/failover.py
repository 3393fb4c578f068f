"""Failover measurement: a numbered UDP stream that reports its loss windows, and a TCP
stream that reports whether it survived and where it stalled.

    with UdpStream("10.2.0.10", sender_netns=west, receiver_netns=east_host) as udp, \\
         TcpStream("10.2.0.10", client_netns=west, server_netns=east_host) as tcp:
        ...                                   # kill the primary tunnel, restore it
    udp.report.windows   # [LossWindow(first=412, last=470, start=..., end=...), ...]
    tcp.report.survived, tcp.report.stalls

Both run in threads of the calling process, with sockets opened inside the given network
namespaces (a socket keeps its namespace), so all timestamps come from one monotonic clock.
The UDP sender sends datagram n at start + n/rate (100/s by default: 10 ms resolution)
and remembers when it sent each; the receiver records what arrived. A loss window is a
maximal run of lost sequence numbers; it starts when the first lost datagram was sent and
ends when the first datagram after the gap was sent (so its duration is how long the
path lost traffic, to one interval). The TCP client writes a paced stream of a known
byte pattern; the server checks every byte, and a stall is a gap between two receptions
longer than `stall_threshold`. The benchmark of issue 16 and the failover tests use it.
Standard library (plus the namespace switch) only: it starts fast in the VM.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.xfrm.channel import in_netns

_HEADER = struct.Struct("!IQ")  # sequence number, send time (ns of time.monotonic_ns)
_MAGIC = 0x6677  # first bytes of a stream datagram: "fw"


@dataclass(frozen=True, slots=True)
class LossWindow:
    """Datagrams first..last were lost; sent from `start` until `end` (monotonic s)."""

    first: int
    last: int
    start: float
    end: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class UdpStreamReport:
    sent: int
    received: int
    duplicates: int
    reordered: int  # arrived after a higher sequence number
    windows: tuple[LossWindow, ...]
    started: float
    stopped: float

    @property
    def lost(self) -> int:
        return sum(w.count for w in self.windows)

    @property
    def longest(self) -> float:
        return max((w.duration for w in self.windows), default=0.0)


def loss_windows(
    send_times: Sequence[float], received: Iterable[int], interval: float
) -> tuple[LossWindow, ...]:
    """Runs of sequence numbers in 0..len(send_times)-1 missing from `received`. A run
    that reaches the end of the stream ends one interval after its last datagram."""
    got = set(received)
    windows = []
    n = len(send_times)
    seq = 0
    while seq < n:
        if seq in got:
            seq += 1
            continue
        first = seq
        while seq < n and seq not in got:
            seq += 1
        end = send_times[seq] if seq < n else send_times[seq - 1] + interval
        windows.append(LossWindow(first, seq - 1, send_times[first], end))
    return tuple(windows)


def _socket(family_of: str, netns: str | None, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in family_of else socket.AF_INET
    with in_netns(netns):
        return socket.socket(family, kind)


class UdpStream:
    """A numbered one-way UDP stream from `sender_netns` to `dst`:`port` in `receiver_netns`."""

    def __init__(
        self,
        dst: str,
        port: int = 5201,
        *,
        src: str | None = None,
        sender_netns: str | None = None,
        receiver_netns: str | None = None,
        rate: float = 100.0,
        size: int = 64,
    ) -> None:
        if rate <= 0 or size < _HEADER.size + 2:
            raise ValueError("rate > 0 and a datagram of at least 14 bytes needed")
        self.dst, self.port, self.rate, self.size = dst, port, rate, size
        self.interval = 1.0 / rate
        self._rx = _socket(dst, receiver_netns, socket.SOCK_DGRAM)
        self._tx = _socket(dst, sender_netns, socket.SOCK_DGRAM)
        self._rx.bind((dst, port))
        self._rx.settimeout(0.1)
        if src is not None:
            self._tx.bind((src, 0))
        self._send_times: list[float] = []
        self._received: list[int] = []
        self._stop_send = threading.Event()
        self._stop_recv = threading.Event()
        self._threads = [
            threading.Thread(target=self._send_loop, daemon=True),
            threading.Thread(target=self._recv_loop, daemon=True),
        ]
        self.report: UdpStreamReport | None = None
        self.send_errors = 0
        self._started = 0.0

    def start(self) -> UdpStream:
        self._started = time.monotonic()
        for t in reversed(self._threads):
            t.start()
        return self

    def _send_loop(self) -> None:
        pad = bytes(self.size - _HEADER.size - 2)
        start = time.monotonic()
        seq = 0
        while not self._stop_send.is_set():
            due = start + seq * self.interval
            delay = due - time.monotonic()
            if delay > 0 and self._stop_send.wait(delay):
                break
            now = time.monotonic()
            data = struct.pack("!H", _MAGIC) + _HEADER.pack(seq, time.monotonic_ns()) + pad
            try:
                self._tx.sendto(data, (self.dst, self.port))
            except OSError:
                self.send_errors += 1  # no route / unreachable: counts as lost
            self._send_times.append(now)
            seq += 1

    def _recv_loop(self) -> None:
        while not self._stop_recv.is_set():
            try:
                data = self._rx.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) >= 2 + _HEADER.size and data[:2] == struct.pack("!H", _MAGIC):
                self._received.append(_HEADER.unpack_from(data, 2)[0])

    def stop(self, drain: float = 1.0) -> UdpStreamReport:
        """Stop sending, wait `drain` seconds for datagrams in flight, report."""
        self._stop_send.set()
        self._threads[0].join()
        stopped = time.monotonic()
        time.sleep(drain)
        self._stop_recv.set()
        self._threads[1].join()
        self._tx.close()
        self._rx.close()
        seen: set[int] = set()
        duplicates = reordered = 0
        highest = -1
        for seq in self._received:
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)
        self.report = UdpStreamReport(
            sent=len(self._send_times),
            received=len(seen),
            duplicates=duplicates,
            reordered=reordered,
            windows=loss_windows(self._send_times, seen, self.interval),
            started=self._started,
            stopped=stopped,
        )
        return self.report

    def __enter__(self) -> UdpStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.report is None:
            self.stop()


# -- TCP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stall:
    """No byte arrived from `start` to `end` (monotonic s)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class TcpStreamReport:
    survived: bool  # connected throughout, every byte arrived intact, clean end
    error: str  # why not, when it did not survive
    sent: int
    received: int
    stalls: tuple[Stall, ...]

    @property
    def longest_stall(self) -> float:
        return max((s.duration for s in self.stalls), default=0.0)


def stalls(arrivals: Sequence[float], threshold: float) -> tuple[Stall, ...]:
    """Gaps longer than `threshold` between consecutive arrival times."""
    return tuple(
        Stall(a, b) for a, b in zip(arrivals, arrivals[1:], strict=False) if b - a > threshold
    )


_CYCLE = 251  # byte i of the stream is i mod 251 (a prime: a lost, repeated or
# reordered block of any power-of-two size shows)
_PATTERN = bytes(range(_CYCLE)) * (65536 // _CYCLE + 2)


def _pattern(offset: int, size: int) -> bytes:
    """Bytes offset..offset+size of the stream."""
    out = bytearray()
    while size > 0:
        start = offset % _CYCLE
        take = min(size, len(_PATTERN) - start)
        out += _PATTERN[start : start + take]
        offset, size = offset + take, size - take
    return bytes(out)


@dataclass
class _TcpState:
    sent: int = 0
    received: int = 0
    arrivals: list[float] = field(default_factory=list)
    error: str = ""
    eof: bool = False


class TcpStream:
    """A paced TCP byte stream from `client_netns` to a server at `dst` in `server_netns`."""

    def __init__(
        self,
        dst: str,
        port: int = 0,
        *,
        src: str | None = None,
        client_netns: str | None = None,
        server_netns: str | None = None,
        rate: float = 100.0,  # writes per second
        chunk: int = 1024,
        stall_threshold: float = 0.2,
        timeout: float = 60.0,  # a blocked send or silent receive longer than this fails
    ) -> None:
        self.chunk, self.interval = chunk, 1.0 / rate
        self.stall_threshold, self.timeout = stall_threshold, timeout
        self._listener = _socket(dst, server_netns, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((dst, port))
        self._listener.listen(1)
        self._listener.settimeout(timeout)
        self.address = (dst, self._listener.getsockname()[1])
        self._client = _socket(dst, client_netns, socket.SOCK_STREAM)
        if src is not None:
            self._client.bind((src, 0))
        self._state = _TcpState()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]
        self.report: TcpStreamReport | None = None

    def start(self) -> TcpStream:
        self._threads[0].start()
        self._client.settimeout(self.timeout)
        self._client.connect(self.address)
        self._threads[1].start()
        return self

    def _fail(self, why: str) -> None:
        if not self._state.error:
            self._state.error = why

    def _write(self) -> None:
        st = self._state
        start = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                delay = start + n * self.interval - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self._client.sendall(_pattern(st.sent, self.chunk))
                st.sent += self.chunk
                n += 1
            self._client.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fail(f"client: {exc!r}")

    def _serve(self) -> None:
        st = self._state
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            self._fail(f"accept: {exc!r}")
            return
        with conn:
            conn.settimeout(self.timeout)
            try:
                while data := conn.recv(65536):
                    if data != _pattern(st.received, len(data)):
                        self._fail(f"server: stream corrupt after {st.received} bytes")
                        return
                    st.received += len(data)
                    st.arrivals.append(time.monotonic())
                st.eof = True
            except OSError as exc:
                self._fail(f"server: {exc!r}")

    def stop(self, drain: float | None = None) -> TcpStreamReport:
        """Stop writing, close our side, wait for the server to read everything."""
        self._stop.set()
        self._threads[1].join(self.timeout + 5)
        self._threads[0].join(drain if drain is not None else self.timeout + 5)
        st = self._state
        if not st.eof and not st.error:
            self._fail(f"server: {st.received} of {st.sent} bytes arrived, no clean end")
        elif st.eof and st.received != st.sent and not st.error:
            self._fail(f"server: {st.received} of {st.sent} bytes arrived")
        self._client.close()
        self._listener.close()
        self.report = TcpStreamReport(
            survived=not st.error,
            error=st.error,
            sent=st.sent,
            received=st.received,
            stalls=stalls(st.arrivals, self.stall_threshold),
        )
        return self.report

    def __enter__(self) -> TcpStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.report is None:
            self.stop()
