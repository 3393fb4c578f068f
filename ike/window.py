"""The request window of an IKE SA (RFC 7296 §2.1-2.3) and IKE fragmentation (RFC 7383).

Window size 1: one request of ours is outstanding, the rest queue behind it; a request is
retransmitted after ``timeout * base**n`` until ``tries`` retransmissions went unanswered.
Our last response is kept to answer a retransmitted request without reprocessing it.
An encrypted message too big for the path goes as SKF fragments when both sides
announced IKEV2_FRAGMENTATION_SUPPORTED; the peer's fragments are checked one by one and
reassembled here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ike.codec import Message, Payload

Wire = bytes | tuple[bytes, ...]  # one datagram, or a message's SKF fragments
# called with (the IkeSa (ike/sa.py, which builds on this module), the response, its
# payloads (decrypted), its bytes, now)
ResponseHandler = Callable[[Any, Message, tuple[Payload, ...], bytes, float], None]
MAX_FRAGMENTS = 64  # per message; more is an attack, not a certificate chain


class Request:
    """Our request on the wire: what answers it, and when it is retransmitted."""

    __slots__ = ("exchange", "message_id", "data", "on_response", "tries", "deadline")

    def __init__(
        self,
        exchange: int,
        message_id: int,
        data: Wire,
        on_response: ResponseHandler,
        deadline: float,
    ) -> None:
        self.exchange = exchange
        self.message_id = message_id
        self.data = data
        self.on_response = on_response
        self.tries = 0
        self.deadline = deadline


class Fragments:
    """SKF fragments of one message being reassembled (RFC 7383 §2.6)."""

    __slots__ = ("message_id", "total", "first_payload", "parts")

    def __init__(self, message_id: int, total: int) -> None:
        self.message_id = message_id
        self.total = total
        self.first_payload = 0
        self.parts: dict[int, bytes] = {}
