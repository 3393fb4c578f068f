"""IKE over UDP: the sockets on port 500 and 4500 (RFC 7296 §2.11, RFC 3948).

One socket per listen address and port. Datagrams are read in batches with recvmsg from
the event loop's reader callback (no per-datagram task, no asyncio protocol objects) and
handed to `on_datagram(data, local, remote)` as bytes plus (ip, port) tuples:

- on the NAT-T port (4500) IKE messages carry a four-zero-byte non-ESP marker (RFC 3948
  §2.2), stripped here; a single 0xFF byte is a NAT-keepalive (§2.3), counted and
  dropped; anything else there is ESP-in-UDP that the kernel did not take (no SA, or
  data plane `none`), counted and dropped;
- on port 500 a datagram shorter than an IKE header (28 bytes) is counted and dropped;
- wildcard sockets (0.0.0.0, ::) learn the local address of each datagram from
  IP_PKTINFO/IPV6_PKTINFO and answer from that same address.

`send(data, local, remote)` picks the socket bound to `local` (adding the marker on the
NAT-T socket). With `keep_marker=True` the marker is left to the caller both ways (the IKE
engine adds and strips it itself, by port number). With `esp_in_udp=True` the NAT-T
socket gets UDP_ENCAP_ESPINUDP so the kernel decapsulates ESP itself, as it must for the
XFRM data plane.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.errors import GatewayError

log = logging.getLogger("gateway.transport")

Addr = tuple[str, int]
DatagramHandler = Callable[[bytes, Addr, Addr], None]

NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
NATT_KEEPALIVE: Final = b"\xff"
IKE_HEADER_LEN: Final = 28
IP_PKTINFO: Final = 8  # linux/in.h (not exported by Python's socket module)
SOL_UDP: Final = 17
UDP_ENCAP: Final = 100  # linux/udp.h
UDP_ENCAP_ESPINUDP: Final = 2
READ_BATCH: Final = 64  # datagrams per readiness callback before yielding to the loop
MAX_DATAGRAM: Final = 65535
_CMSG_SPACE: Final = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(20)


class TransportError(GatewayError):
    pass


@dataclass(slots=True)
class TransportCounters:
    received: int = 0
    sent: int = 0
    keepalives: int = 0
    esp_dropped: int = 0  # ESP-in-UDP reaching user space (no kernel SA for it)
    malformed: int = 0  # too short for IKE
    send_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Socket:
    sock: socket.socket
    family: int
    address: str  # as bound ("0.0.0.0" / "::" for wildcard)
    port: int  # actual port (after binding port 0)
    nat_t: bool
    wildcard: bool


class UdpTransport:
    """The IKE sockets of one process. `start()` binds, `close()` releases."""

    def __init__(
        self,
        listen: Sequence[str],
        port: int,
        port_nat_t: int,
        on_datagram: DatagramHandler,
        *,
        esp_in_udp: bool = False,
        reuse_port: bool = False,
        keep_marker: bool = False,
        prebound: Sequence[tuple[socket.socket, bool]] = (),
    ) -> None:
        self.listen = tuple(listen)
        self.port = port
        self.port_nat_t = port_nat_t
        self.on_datagram = on_datagram
        self.esp_in_udp = esp_in_udp
        self.reuse_port = reuse_port
        self.keep_marker = keep_marker
        self.prebound = tuple(prebound)  # (socket, is the NAT-T socket) already bound
        self.counters = TransportCounters()
        self._sockets: list[_Socket] = []
        self._by_local: dict[Addr, _Socket] = {}
        self._by_port: dict[tuple[int, int], _Socket] = {}  # (family, port) of wildcards
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ setup

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if self.prebound:  # bound by the supervisor (gateway/workers/): adopt them
            for sock, nat_t in self.prebound:
                sock.setblocking(False)
                self._add(sock, nat_t)
            log.info(
                "event=transport-listening addresses=%s",
                ",".join(f"{s.address}:{s.port}" for s in self._sockets),
            )
            return
        try:
            for address in self.listen:
                self._open(address, self.port, nat_t=False)
                # With an ephemeral IKE port (tests), the NAT-T port is ephemeral too.
                self._open(address, self.port_nat_t if self.port else 0, nat_t=True)
        except OSError as exc:
            self.close()
            raise TransportError(f"cannot open IKE socket: {exc.strerror or exc}") from None
        log.info(
            "event=transport-listening addresses=%s",
            ",".join(f"{s.address}:{s.port}" for s in self._sockets),
        )

    def _open(self, address: str, port: int, *, nat_t: bool) -> _Socket:
        sock = bind_socket(
            address, port, reuse_port=self.reuse_port, esp_in_udp=nat_t and self.esp_in_udp
        )
        return self._add(sock, nat_t)

    def _add(self, sock: socket.socket, nat_t: bool) -> _Socket:
        bound = sock.getsockname()
        family = sock.family
        wildcard = ipaddress.ip_address(bound[0]).is_unspecified
        entry = _Socket(sock, family, bound[0], bound[1], nat_t, wildcard)
        self._sockets.append(entry)
        if wildcard:
            self._by_port[(family, entry.port)] = entry
        else:
            self._by_local[(entry.address, entry.port)] = entry
        loop = self._loop or asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable, entry)
        return entry

    def close(self) -> None:
        for entry in self._sockets:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(entry.sock.fileno())
            entry.sock.close()
        self._sockets.clear()
        self._by_local.clear()
        self._by_port.clear()

    def local_ports(self) -> dict[str, int]:
        """{"ike": port, "nat_t": port} as bound (useful with ephemeral ports)."""
        out: dict[str, int] = {}
        for entry in self._sockets:
            out.setdefault("nat_t" if entry.nat_t else "ike", entry.port)
        return out

    def is_nat_t_port(self, port: int) -> bool:
        return any(e.nat_t and e.port == port for e in self._sockets)

    # ------------------------------------------------------------------ receive

    def _readable(self, entry: _Socket) -> None:
        sock = entry.sock
        for _ in range(READ_BATCH):
            try:
                data, ancdata, _flags, remote = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors from earlier sends surface here (ECONNREFUSED...): not fatal.
                if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("event=transport-recv-error error=%s", exc.strerror)
                continue
            local_ip = _pktinfo_address(ancdata) if entry.wildcard else entry.address
            self._deliver(entry, data, (local_ip or entry.address, entry.port), remote[:2])

    def _deliver(self, entry: _Socket, data: bytes, local: Addr, remote: Addr) -> None:
        if entry.nat_t:
            if data == NATT_KEEPALIVE:
                self.counters.keepalives += 1
                return
            if data[:4] != NON_ESP_MARKER:
                self.counters.esp_dropped += 1
                return
            if len(data) < IKE_HEADER_LEN + 4:
                self.counters.malformed += 1
                return
            if not self.keep_marker:
                data = data[4:]
        elif len(data) < IKE_HEADER_LEN:
            self.counters.malformed += 1
            return
        self.counters.received += 1
        self.on_datagram(data, local, remote)

    # ------------------------------------------------------------------ send

    def socket_for(self, local: Addr) -> _Socket | None:
        entry = self._by_local.get(local)
        if entry is None:
            family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
            entry = self._by_port.get((family, local[1]))
        return entry

    def send(self, data: bytes, local: Addr, remote: Addr) -> bool:
        """Send one IKE message from `local` to `remote`; False (counted) if impossible."""
        entry = self.socket_for(local)
        if entry is None:
            self.counters.send_errors += 1
            log.warning("event=transport-no-socket local=%s:%d", local[0], local[1])
            return False
        payload = NON_ESP_MARKER + data if entry.nat_t and not self.keep_marker else data
        try:
            if entry.wildcard and local[0] != entry.address:
                entry.sock.sendmsg([payload], [_pktinfo_cmsg(entry.family, local[0])], 0, remote)
            else:
                entry.sock.sendto(payload, remote)
        except OSError as exc:
            self.counters.send_errors += 1
            log.warning(
                "event=transport-send-error remote=%s:%d error=%s",
                remote[0],
                remote[1],
                exc.strerror,
            )
            return False
        self.counters.sent += 1
        return True

    def send_keepalive(self, local: Addr, remote: Addr) -> bool:
        """RFC 3948 §2.3 NAT-keepalive (one 0xFF byte) from the NAT-T socket."""
        entry = self.socket_for(local)
        if entry is None or not entry.nat_t:
            return False
        try:
            entry.sock.sendto(NATT_KEEPALIVE, remote)
        except OSError:
            self.counters.send_errors += 1
            return False
        return True


def bind_socket(
    address: str, port: int, *, reuse_port: bool = False, esp_in_udp: bool = False
) -> socket.socket:
    """One bound, non-blocking IKE socket (IP_PKTINFO on wildcards, v6only for IPv6).
    OSError (naming the address and port) when the kernel refuses."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # No SO_REUSEADDR: for UDP on Linux it would let a second daemon bind our port.
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        wildcard = ip.is_unspecified
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif wildcard:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((str(ip), port))
        if esp_in_udp:
            sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{address} port {port}: {exc.strerror}") from None
    return sock


def _pktinfo_address(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # in_pktinfo.ipi_addr
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return socket.inet_ntop(socket.AF_INET6, data[:16])  # in6_pktinfo.ipi6_addr
    return None


def _pktinfo_cmsg(family: int, source: str) -> tuple[int, int, bytes]:
    if family == socket.AF_INET6:
        return (
            socket.IPPROTO_IPV6,
            socket.IPV6_PKTINFO,
            socket.inet_pton(socket.AF_INET6, source) + struct.pack("=i", 0),
        )
    # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
    addr = socket.inet_pton(socket.AF_INET, source)
    return socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i", 0) + addr + bytes(4)
