"""One EAP conversation (RFC 3748), either side, as a state machine over packet bytes.

Theory of operation. The authenticator (`EapAuthenticator`, the gateway as IKE responder,
RFC 7296 §2.16) asks for the peer's identity with EAP-Identity unless it already knows it,
then runs its methods in order of preference: the first one is proposed, a Nak in answer
to a method's first Request (§5.3) switches to the first configured method the peer
asked for. Every Response must carry the Identifier of the outstanding Request (the IKE
exchange under it retransmits, so a mismatch is a protocol error, not a loss). The end is
EAP-Success (the method succeeded; `msk` holds its key) or EAP-Failure, both with the
Identifier of the Response they answer (§4.2).

The peer (`EapPeer`, our IKE initiator) answers Identity with its identity and
Notification with an empty Response, Naks a method it does not have (listing the ones it
has), and refuses a change of method in mid-conversation. EAP-Success counts only when the
method has reached a state that allows it (mutual authentication done, §4.2 and RFC 3748
§7.2); an early Success is a failure. A repeated Request gets the same Response again
(§4.1).

Both `receive` methods never raise on peer input: a malformed or unexpected packet ends
the conversation with `status` FAILURE and a `failure_reason` for the log (never a
secret). Calling them after the end is our caller's misuse (LocalError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import Enum

from ike.constants import name_of
from ike.eap import packet as p
from ike.eap.errors import EapDecodeError, EapFailure
from ike.eap.method import Done, PeerMethod, RandomSource, ServerMethod
from ike.eap.packet import Code, EapPacket, EapType
from ike.errors import LocalError

ServerMethodFactory = Callable[[bytes], ServerMethod]
"""Makes the authenticator's method for a peer identity."""
PeerMethodFactory = Callable[[], PeerMethod]

MAX_ROUNDS = 100  # EAP-TLS with a long chain in 1 KB fragments stays far below this
MAX_IDENTITY = 253  # what fits one RADIUS User-Name attribute


class Status(Enum):
    CONTINUE = "continue"
    SUCCESS = "success"
    FAILURE = "failure"


class EapAuthenticator:
    """The authenticator's side. `methods`: EAP Type -> factory, in order of preference.
    `identity`: the peer's EAP identity when known (then no EAP-Identity round)."""

    def __init__(
        self,
        methods: Mapping[int, ServerMethodFactory],
        *,
        identity: bytes | None = None,
        random: RandomSource = os.urandom,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        if not methods:
            raise LocalError("EAP authenticator without methods")
        self._factories = dict(methods)
        self._tried: list[int] = []
        self._method: ServerMethod | None = None
        self._method_rounds = 0
        self._identifier = random(1)[0]
        self._rounds = 0
        self._max_rounds = max_rounds
        self.identity = identity
        self.status = Status.CONTINUE
        self.msk: bytes | None = None
        self.failure_reason: str | None = None
        self._started = False

    @property
    def method_type(self) -> int | None:
        return self._method.type if self._method is not None else None

    @property
    def failure_pending(self) -> str | None:
        """The method decided the peer failed and waits for its acknowledgement: why."""
        return self._method.failure_pending if self._method is not None else None

    def start(self) -> bytes:
        """The first Request."""
        if self._started:
            raise LocalError("EAP conversation already started")
        self._started = True
        if self.identity is None:
            return p.encode_eap(p.request(self._identifier, EapType.IDENTITY))
        return self._start_method(next(iter(self._factories)))

    def receive(self, data: bytes) -> bytes:
        """The peer's Response in; the next Request, or Success/Failure, out."""
        if not self._started or self.status is not Status.CONTINUE:
            raise LocalError("EAP conversation is not waiting for a Response")
        try:
            pkt = p.decode_eap(data)
        except EapDecodeError as exc:
            return self._fail(f"malformed EAP Response: {exc}")
        if pkt.code != Code.RESPONSE:
            return self._fail(f"expected an EAP Response, got Code {pkt.code}")
        if pkt.identifier != self._identifier:
            return self._fail(
                f"EAP Response with Identifier {pkt.identifier}, expected {self._identifier}"
            )
        self._rounds += 1
        if self._rounds > self._max_rounds:
            return self._fail(f"more than {self._max_rounds} EAP rounds")
        if self._method is None:
            return self._on_identity(pkt)
        return self._on_method(pkt, self._method)

    def _on_identity(self, pkt: EapPacket) -> bytes:
        if pkt.type != EapType.IDENTITY:
            return self._fail(f"expected an EAP-Identity Response, got Type {pkt.type}")
        identity = pkt.data.split(b"\x00", 1)[0]  # §5.1: a NUL may precede options
        if not identity:
            return self._fail("empty EAP identity")
        if len(identity) > MAX_IDENTITY:
            return self._fail(f"EAP identity of {len(identity)} bytes")
        self.identity = identity
        return self._start_method(next(iter(self._factories)))

    def _on_method(self, pkt: EapPacket, method: ServerMethod) -> bytes:
        if pkt.type == EapType.NAK and self._method_rounds == 0:
            try:
                desired = p.nak_types(pkt)
            except EapDecodeError as exc:
                return self._fail(str(exc))
            for t in self._factories:
                if t in desired and t not in self._tried:
                    return self._start_method(t)
            names = ", ".join(name_of(EapType, t) for t in desired)
            return self._fail(
                f"the peer refused {EapType(method.type).name} and wants none of ours "
                f"({names or 'nothing'})"
            )
        if pkt.type != method.type:
            return self._fail(f"EAP Response of Type {pkt.type} to a {method.type} Request")
        self._method_rounds += 1
        out = method.process(pkt.data)
        if isinstance(out, Done):
            if not out.success:
                return self._fail(out.reason or "the EAP method failed")
            self.status = Status.SUCCESS
            self.msk = method.msk
            return p.encode_eap(p.success(self._identifier))
        return self._send(p.request(self._next_identifier(), method.type, out))

    def _start_method(self, eap_type: int) -> bytes:
        assert self.identity is not None  # set before any method starts (our own invariant)
        method = self._factories[eap_type](self.identity)
        self._method = method
        self._method_rounds = 0
        self._tried.append(eap_type)
        return self._send(p.request(self._next_identifier(), eap_type, method.start()))

    def _next_identifier(self) -> int:
        self._identifier = (self._identifier + 1) & 0xFF
        return self._identifier

    def _send(self, pkt: EapPacket) -> bytes:
        try:
            return p.encode_eap(pkt)
        except ValueError as exc:  # a method produced more than an EAP packet holds
            return self._fail(str(exc))

    def _fail(self, reason: str) -> bytes:
        self.status = Status.FAILURE
        self.failure_reason = reason
        return p.encode_eap(p.failure(self._identifier))


class EapPeer:
    """The peer's side. `methods`: EAP Type -> factory of the methods we can run."""

    def __init__(self, identity: bytes, methods: Mapping[int, PeerMethodFactory]) -> None:
        self.identity = identity
        self._factories = dict(methods)
        self._method: PeerMethod | None = None
        self._last: tuple[bytes, bytes] | None = None  # (Request, our Response)
        self.status = Status.CONTINUE
        self.msk: bytes | None = None
        self.failure_reason: str | None = None

    @property
    def method_type(self) -> int | None:
        return self._method.type if self._method is not None else None

    def receive(self, data: bytes) -> bytes | None:
        """The authenticator's packet in; our Response out, or None once it is over."""
        if self.status is not Status.CONTINUE:
            raise LocalError("EAP conversation is over")
        if self._last is not None and data == self._last[0]:
            return self._last[1]
        try:
            pkt = p.decode_eap(data)
        except EapDecodeError as exc:
            self._fail(f"malformed EAP packet: {exc}")
            return None
        if pkt.code == Code.SUCCESS:
            method = self._method
            if method is None or not method.succeeded:
                self._fail("EAP-Success before the method authenticated the server")
                return None
            self.status = Status.SUCCESS
            self.msk = method.msk
            return None
        if pkt.code == Code.FAILURE:
            reason = self._method.failure if self._method is not None else None
            self._fail(reason or "the authenticator sent EAP-Failure")
            return None
        if pkt.code != Code.REQUEST:
            self._fail(f"expected an EAP Request, got Code {pkt.code}")
            return None
        out = self._answer(pkt)
        if out is None:
            return None
        wire = p.encode_eap(out)
        self._last = (bytes(data), wire)
        return wire

    def _answer(self, pkt: EapPacket) -> EapPacket | None:
        t = pkt.type
        assert t is not None  # decode_eap sets it on every Request
        if t == EapType.IDENTITY:
            return p.response(pkt.identifier, EapType.IDENTITY, self.identity)
        if t == EapType.NOTIFICATION:
            return p.response(pkt.identifier, EapType.NOTIFICATION)
        if t in (EapType.NAK, EapType.EXPANDED):
            self._fail(f"unexpected EAP Request of Type {t}")
            return None
        method = self._method
        if method is None:
            factory = self._factories.get(t)
            if factory is None:
                return p.nak(pkt.identifier, tuple(self._factories))
            method = self._method = factory()
        elif method.type != t:
            self._fail(f"the authenticator switched from Type {method.type} to {t}")
            return None
        try:
            return p.response(pkt.identifier, t, method.process(pkt.data))
        except (EapFailure, EapDecodeError) as exc:
            self._fail(str(exc))
            return None

    def _fail(self, reason: str) -> None:
        self.status = Status.FAILURE
        self.failure_reason = reason
        return None
