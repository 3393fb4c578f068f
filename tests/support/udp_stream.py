"""A counted UDP echo stream for loss tests: every datagram is numbered, so the test
knows exactly which ones were lost (ping cannot say that about the echo in flight when
it is interrupted).

    python -m tests.support.udp_stream echo BIND_ADDR PORT
    python -m tests.support.udp_stream send SRC DST PORT INTERVAL

`echo` returns every datagram to its sender until killed. `send` sends a numbered
datagram every INTERVAL seconds from SRC to DST:PORT until SIGINT/SIGTERM, then waits up
to 5 s for the echoes still in flight and prints one JSON line:
{"sent": N, "echoed": M, "missing": ["first-last", ...]} (runs of lost numbers).
Standard library only (it starts fast inside the VM).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import sys
import time

_SEQ = struct.Struct("!Q")
DRAIN = 5.0  # seconds to wait for the echoes in flight after the stop signal


def _socket(addr: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM)


def echo(bind: str, port: int) -> None:
    sock = _socket(bind)
    sock.bind((bind, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def send(src: str, dst: str, port: int, interval: float) -> dict[str, object]:
    sock = _socket(src)
    sock.bind((src, 0))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sent = 0
    echoed: set[int] = set()
    next_send = time.monotonic()
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        if now >= next_send:
            try:
                sock.sendto(_SEQ.pack(sent) + bytes(56), (dst, port))
            except OSError:
                pass  # e.g. no route/SA yet: it counts as lost
            sent += 1
            next_send += interval
        _receive(sock, echoed, max(0.0, next_send - time.monotonic()))
    deadline = time.monotonic() + DRAIN
    while len(echoed) < sent and time.monotonic() < deadline:
        _receive(sock, echoed, 0.1)
    missing = sorted(set(range(sent)) - echoed)
    return {"sent": sent, "echoed": len(echoed), "missing": _ranges(missing)[:50]}


def _ranges(numbers: list[int]) -> list[str]:
    """[3, 4, 5, 9] -> ["3-5", "9"]: where the losses were, compactly."""
    out: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return out


def _receive(sock: socket.socket, echoed: set[int], timeout: float) -> None:
    try:
        ready, _, _ = select.select([sock], [], [], timeout)
    except InterruptedError:
        return
    while ready:
        try:
            data = sock.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if len(data) >= _SEQ.size:
            echoed.add(_SEQ.unpack_from(data)[0])


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "echo":
        echo(argv[1], int(argv[2]))
        return 0
    if len(argv) == 5 and argv[0] == "send":
        print(json.dumps(send(argv[1], argv[2], int(argv[3]), float(argv[4]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
