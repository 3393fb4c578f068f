"""Two EAP endpoints in memory, and a deterministic random source."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ike.eap.session import EapAuthenticator, EapPeer, Status


def counter_random(start: int = 1) -> Callable[[int], bytes]:
    counter = itertools.count(start)
    return lambda n: bytes(next(counter) & 0xFF for _ in range(n))


def converse(
    auth: EapAuthenticator,
    peer: EapPeer,
    tamper: Callable[[int, bytes], bytes] | None = None,
) -> list[bytes]:
    """Run the conversation to its end; every packet on the wire, in order. `tamper`
    (index, packet) may rewrite a packet in flight."""
    wire: list[bytes] = []

    def send(data: bytes) -> bytes:
        data = tamper(len(wire), data) if tamper else data
        wire.append(data)
        return data

    request = send(auth.start())
    while True:
        answer = peer.receive(request)
        if answer is None or auth.status is not Status.CONTINUE:
            return wire
        request = send(auth.receive(send(answer)))


def advance(auth: EapAuthenticator, peer: EapPeer, rounds: int) -> bytes | None:
    """Start and run `rounds` honest round trips; the outstanding Request, or None when
    the conversation ended before."""
    request = auth.start()
    for _ in range(rounds):
        answer = peer.receive(request) if peer.status is Status.CONTINUE else None
        if answer is None or auth.status is not Status.CONTINUE:
            return None
        request = auth.receive(answer)
    return request if auth.status is Status.CONTINUE else None
