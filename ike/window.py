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
from typing import Any, Protocol

from ike import codec
from ike.codec import Encrypted, EncryptedFragment, Message, Payload
from ike.config import CompiledConnection, EngineSettings
from ike.constants import NON_ESP_MARKER, PayloadType
from ike.errors import DecodeError
from ike.events import Endpoint
from ike.sk import SkCipher

Wire = bytes | tuple[bytes, ...]  # one datagram, or a message's SKF fragments
# called with (the engine as ike/host.py's host, the IkeSa (ike/sa.py), the response, its
# payloads (decrypted), its bytes, now). Handed the host at call time, a handler need
# not hold the engine: a dropped engine is freed by reference counting.
ResponseHandler = Callable[[Any, Any, Message, tuple[Payload, ...], bytes, float], None]
MAX_FRAGMENTS = 64  # per message; more is an attack, not a certificate chain


def ignore_response(
    host: Any, sa: Any, msg: Message, payloads: tuple[Payload, ...], data: bytes, now: float
) -> None:
    """The handler of a request whose answer changes nothing (a liveness check, a Delete
    of a Child SA we already forgot, telling the peer AUTHENTICATION_FAILED)."""
    return None


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


class WindowSa(Protocol):
    """What the window needs of an IKE SA (ike/sa.py's IkeSa has it)."""

    sk: SkCipher | None
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    conn: CompiledConnection | None
    local: Endpoint
    remote: Endpoint
    frag: bool
    fragments: Fragments | None
    last_response: tuple[int, int, Wire] | None


# --------------------------------------------------------------------------- requests


def answers(req: Request, hdr: codec.Header) -> bool:
    """Does a response with this header answer our outstanding request `req`?"""
    return req.message_id == hdr.message_id and req.exchange == hdr.exchange_type


def cached_response(sa: WindowSa, hdr: codec.Header, data: bytes) -> Wire | None:
    """For a retransmission of the request we answered last: our cached answer, or b""
    for a fragment of it other than the first (a fragmented request's retransmission is
    answered once, on fragment 1). None for any other request (§2.1)."""
    cached = sa.last_response
    if cached is None or (hdr.message_id, hdr.exchange_type) != cached[:2]:
        return None
    if data[16] == PayloadType.SKF and data[32:34] != b"\x00\x01":
        return b""
    return cached[2]


def retransmit(req: Request, settings: EngineSettings, now: float) -> bool:
    """`req` is due: count a retransmission and set its next deadline (timeout *
    base**n), or False when `retransmit_tries` retransmissions went unanswered."""
    if req.tries >= settings.retransmit_tries:
        return False
    req.tries += 1
    req.deadline = now + settings.retransmit_timeout * settings.retransmit_base**req.tries
    return True


def retransmission_span(settings: EngineSettings) -> float:
    """How long a peer keeps retransmitting one request before it gives up (~165 s)."""
    s = settings
    return sum(s.retransmit_timeout * s.retransmit_base**n for n in range(s.retransmit_tries + 1))


# --------------------------------------------------------------------------- SK / SKF


def unprotect(sa: WindowSa, msg: Message, data: bytes) -> tuple[Payload, ...] | None:
    """The payloads of an SK message, or of the last SKF fragment that completes one
    (None while fragments are missing)."""
    sk = msg.payloads[-1] if msg.payloads else None
    if type(sk) is EncryptedFragment and sa.sk is not None and sa.frag:
        return _reassemble(sa, msg, data, sk)
    if type(sk) is not Encrypted or sa.sk is None:
        raise DecodeError("message without an Encrypted payload")
    return sa.sk.unprotect(data, sk)


def _reassemble(
    sa: WindowSa, msg: Message, data: bytes, skf: EncryptedFragment
) -> tuple[Payload, ...] | None:
    """RFC 7383 §2.6: each fragment is checked and decrypted on its own (a forged one
    raises IntegrityError and is dropped); the inner payloads are decoded once all
    fragments of the message are in."""
    assert sa.sk is not None
    if skf.total > MAX_FRAGMENTS:
        raise DecodeError(f"{skf.total} fragments")
    chunk = sa.sk.unprotect_fragment(data, skf)
    buf = sa.fragments
    if buf is None or buf.message_id != msg.message_id or buf.total != skf.total:
        buf = sa.fragments = Fragments(msg.message_id, skf.total)
    if skf.number == 1:
        buf.first_payload = skf.first_payload
    buf.parts[skf.number] = chunk
    if len(buf.parts) < buf.total:
        return None
    sa.fragments = None
    inner = b"".join(buf.parts[n] for n in range(1, buf.total + 1))
    return codec.decode_payloads(buf.first_payload, inner)


def protect(
    sa: WindowSa,
    settings: EngineSettings,
    exchange: int,
    mid: int,
    payloads: list[Payload],
    *,
    is_response: bool,
) -> Wire:
    """The encrypted message, as SKF fragments when it is too big and the peer takes
    them (RFC 7383 §2.5; fragment_size counts the IP and UDP headers and the marker)."""
    sk, spi_i, spi_r, initiator = sa.sk, sa.spi_i, sa.spi_r, sa.initiator
    assert sk is not None
    data = sk.protect(
        spi_i,
        spi_r,
        exchange,
        is_initiator=initiator,
        is_response=is_response,
        message_id=mid,
        payloads=payloads,
    )
    if not sa.frag or (sa.conn is not None and sa.conn.config.fragmentation == "accept"):
        return data
    limit = settings.fragment_size - (48 if ":" in sa.remote[0] else 28)
    if settings.nat_t_port in (sa.local[1], sa.remote[1]):
        limit -= len(NON_ESP_MARKER)
    if len(data) <= limit:
        return data
    return tuple(
        sk.protect_fragments(
            spi_i,
            spi_r,
            exchange,
            is_initiator=initiator,
            is_response=is_response,
            message_id=mid,
            payloads=payloads,
            max_size=limit,
        )
    )
