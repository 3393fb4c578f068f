"""One netlink socket to the XFRM family (or, for route-based tunnels, to rtnetlink),
with batched requests.

pyroute2's own `NetlinkSocket` runs a private asyncio loop for every call, which cannot
run inside the daemon's loop ("This event loop is already running"), and its batch path
asks for one ACK per message. This channel is a plain AF_NETLINK socket that sends many
messages per sendmsg(): only the last message of each chunk asks for an ACK, and the
kernel reports errors of the others anyway (netlink_rcv_skb acks every failed message),
so one ACK per chunk proves the whole chunk was processed. Replies and dumps are decoded
with the pyroute2 classes of gateway.xfrm.netlink. `NetlinkChannel` is the socket logic for
any netlink family; `XfrmChannel` is it for NETLINK_XFRM (gateway.routing.rtnl has the
NETLINK_ROUTE one, for XFRM interfaces and routes).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from gateway.xfrm.errors import KernelError, XfrmError
from gateway.xfrm.netlink import MSG_NAMES, NETLINK_XFRM, MarshalXfrm

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
CLONE_NEWNET = 0x40000000

T = TypeVar("T")
HEADER = struct.Struct("=IHHII")
CHUNK_BYTES = 128 * 1024  # per sendmsg(); well below the send buffer
RECV_BYTES = 1 << 20


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread in network namespace `name` (None: stay).

    Sockets keep the namespace they were created in, so a socket made inside the body
    works there after the thread has switched back.
    """
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError:
        os.close(own)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail back
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(target)
        os.close(own)


def open_xfrm_socket(netns: str | None = None, groups: tuple[int, ...] = ()) -> socket.socket:
    return open_netlink_socket(NETLINK_XFRM, netns, groups)


def open_netlink_socket(
    protocol: int,
    netns: str | None = None,
    groups: tuple[int, ...] = (),
    *,
    rcvbuf: int = 32 << 20,
    sndbuf: int = 4 << 20,
) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        # Room for the replies of a whole chunk (root may exceed rmem_max; others get
        # what the sysctl allows).
        for force, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class Failure:
    """One rejected message of a batch."""

    seq: int
    errno: int
    reason: str


def parse_error(data: bytes | memoryview, offset: int, length: int, flags: int) -> tuple[int, str]:
    """errno and extended-ack text of an NLMSG_ERROR (the socket uses NETLINK_CAP_ACK)."""
    (error,) = struct.unpack_from("=i", data, offset + 16)
    reason = ""
    if flags & NLM_F_ACK_TLVS:
        pos = offset + 16 + 4 + 16  # error code, then the original header only (CAP_ACK)
        end = offset + length
        while pos + 4 <= end:
            alen, atype = struct.unpack_from("=HH", data, pos)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                reason = bytes(data[pos + 4 : pos + alen]).rstrip(b"\0").decode(errors="replace")
            pos += (alen + 3) & ~3
    return -error, reason


def describe(msg_type: int) -> str:
    return MSG_NAMES.get(msg_type, f"type {msg_type}")


class NetlinkChannel:
    """Request/response access to one netlink family: batches, single requests, dumps.

    Subclasses name the family (`PROTOCOL`), the pyroute2 marshal that decodes its
    replies (`make_marshal`) and the error type raised for a refusal (`ERROR`).
    """

    PROTOCOL: ClassVar[int]
    ERROR: ClassVar[type[KernelError]]
    RCVBUF: ClassVar[int] = 32 << 20
    SNDBUF: ClassVar[int] = 4 << 20

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = open_netlink_socket(
            self.PROTOCOL, netns, rcvbuf=self.RCVBUF, sndbuf=self.SNDBUF
        )
        self._seq = 0
        self._buf = bytearray(RECV_BYTES)
        self.marshal = self.make_marshal()

    def make_marshal(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def reserve_seqs(self, count: int) -> int:
        """First of `count` consecutive sequence numbers (for builders that number messages)."""
        if self._seq + count >= 0xFFFFFFFF:
            self._seq = 0
        first = self._seq + 1
        self._seq += count
        return first

    # -- batches ---------------------------------------------------------------------

    def send_batch(self, messages: list[bytes]) -> list[Failure]:
        """Send encoded requests (flags without NLM_F_ACK), many per sendmsg().

        Returns the failures; an empty list means the kernel accepted every message.
        """
        failures: list[Failure] = []
        i, n = 0, len(messages)
        while i < n:
            size, j = 0, i
            while j < n and (j == i or size + len(messages[j]) <= CHUNK_BYTES):
                size += len(messages[j])
                j += 1
            last = bytearray(messages[j - 1])
            flags, seq = struct.unpack_from("=HI", last, 6)
            struct.pack_into("=H", last, 6, flags | NLM_F_ACK)
            self.sock.send(b"".join(messages[i : j - 1]) + bytes(last))
            failures.extend(self._collect(seq))
            i = j
        return failures

    def _collect(self, last_seq: int) -> list[Failure]:
        failures: list[Failure] = []
        while True:
            n = self.sock.recv_into(self._buf)
            view = memoryview(self._buf)[:n]
            offset = 0
            while offset + 16 <= n:
                length, mtype, flags, seq, _pid = HEADER.unpack_from(view, offset)
                if length < 16:
                    break
                if mtype == NLMSG_ERROR:
                    err, reason = parse_error(view, offset, length, flags)
                    if err:
                        failures.append(Failure(seq, err, reason))
                    if seq == last_seq:
                        return failures
                offset += (length + 3) & ~3

    # -- single requests and dumps ----------------------------------------------------

    def _replies(self, seq: int) -> Iterator[tuple[int, int, bytes, int, int]]:
        """(type, flags, data, offset, length) of every message answering `seq`."""
        while True:
            n = self.sock.recv_into(self._buf)
            data = bytes(self._buf[:n])
            offset = 0
            while offset + 16 <= n:
                length, mtype, flags, rseq, _pid = HEADER.unpack_from(data, offset)
                if length < 16:
                    break
                if rseq == seq:
                    yield mtype, flags, data, offset, length
                offset += (length + 3) & ~3

    def _send(self, msg_type: int, flags: int, payload: bytes) -> int:
        seq = self.next_seq()
        self.sock.send(HEADER.pack(16 + len(payload), msg_type, flags, seq, 0) + payload)
        return seq

    def request(self, msg_type: int, payload: bytes, operation: str, flags: int = 0) -> Any | None:
        """Send one request (`flags` besides REQUEST|ACK, e.g. CREATE|EXCL); return its
        decoded reply (None for a bare ACK)."""
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, payload)
        reply = None
        for mtype, rflags, data, offset, length in self._replies(seq):
            if mtype == NLMSG_ERROR:
                err, reason = parse_error(data, offset, length, rflags)
                if err:
                    raise self.ERROR(operation, err, reason)
                break
            reply = next(iter(self.marshal.parse(data[offset : offset + length])))
        return reply

    def _dump(
        self, msg_type: int, payload: bytes, reply_type: int | None
    ) -> Iterator[tuple[bytes, int, int]]:
        """(data, offset, length) of each `reply_type` message (None: every message) of
        the dump `msg_type` asks for, left in the receive buffer."""
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, payload)
        for mtype, flags, data, offset, length in self._replies(seq):
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                err, reason = parse_error(data, offset, length, flags)
                if err:
                    raise self.ERROR(f"dump {self.describe(msg_type)}", err, reason)
                return
            if reply_type is None or mtype == reply_type:
                yield data, offset, length

    def dump(self, msg_type: int, payload: bytes = b"") -> list[Any]:
        """Every message of a dump, decoded by the pyroute2 classes."""
        out: list[Any] = []
        for data, offset, length in self._dump(msg_type, payload, None):
            out.extend(self.marshal.parse(data[offset : offset + length]))
        return out

    def dump_scan(
        self,
        msg_type: int,
        reply_type: int,
        scan: Callable[[bytes, int], T],
        payload: bytes = b"",
    ) -> list[T]:
        """scan(data, offset of the payload) of every `reply_type` message of a dump,
        without copying the messages out of the receive buffer."""
        return [scan(d, o + 16) for d, o, _ in self._dump(msg_type, payload, reply_type)]

    def dump_raw(self, msg_type: int, reply_type: int) -> list[bytes]:
        """Payloads (after the netlink header) of a dump's `reply_type` messages, undecoded."""
        return [d[o + 16 : o + n] for d, o, n in self._dump(msg_type, b"", reply_type)]

    def describe(self, msg_type: int) -> str:
        return describe(msg_type)


class XfrmChannel(NetlinkChannel):
    """Request/response access to XFRM: batches, single requests and dumps."""

    PROTOCOL = NETLINK_XFRM
    ERROR = XfrmError

    def make_marshal(self) -> Any:
        return MarshalXfrm()

    def __enter__(self) -> XfrmChannel:
        return self
