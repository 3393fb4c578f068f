"""IKE socket steering for SO_REUSEPORT workers: a classic BPF program that picks the
worker socket owning an IKE SA from the SPIs in the packet (docs/daemon.md, "Workers").

The kernel runs a reuseport group's program for every datagram addressed to the group
(net/core/sock_reuseport.c, `run_bpf_filter`): the UDP header is pulled first, so absolute
loads start at the UDP payload, and the program's return value is an index into the
group's socket array, in the order the sockets joined (bound). An index >= the number of
sockets means "no choice" and the kernel falls back to its own 4-tuple hash.

Decision (RFC 7296 §3.1 header; on the NAT-T port behind the 4-byte non-ESP marker,
RFC 3948 §2.2):

- shorter than an IKE header, or on the NAT-T port not starting with the marker (ESP in
  UDP, NAT-keepalives): no choice (kernel hash; ESP is decapsulated by any socket);
- SPIr zero and the Response flag clear (an IKE_SA_INIT request): hash SPIi (its high
  32 bits) over the *live* workers (a worker that is not running gets no new IKE SAs);
- otherwise the owner's SPI is SPIr when the Initiator flag is set (the peer initiated,
  we are the responder and chose SPIr), else SPIi (we initiated); the worker index is
  `owner_of_spi(spi, workers)`. An IKE_SA_INIT response with SPIr zero (COOKIE,
  INVALID_KE_PAYLOAD) has the Initiator flag clear: it goes to the SPIi owner, which is us;
  so does any response with SPIr zero, also a malformed one with the Initiator flag set.

Why classic BPF and not an eBPF sk_reuseport program with a REUSEPORT_SOCKARRAY: the
supervisor binds every worker's sockets itself, in worker order, and keeps them open for
the daemon's lifetime (workers inherit them), so the socket index *is* the worker index
and never changes (a socket leaving a group would move the last one into its place; ours
never leave). The only thing that changes is which workers are running, and that is
data for the IKE_SA_INIT branch: the supervisor attaches a regenerated program (a few
dozen instructions, no compiler: bcc's compile costs seconds on the host and a minute in
the test VM). The eBPF route would need one sockarray per (address, port) group and a
bcc compile per start for the same decisions.

`select_worker` is the same decision in Python (the reference the tests compare the
program with, through `run_cbpf`, a small interpreter of the instructions used here).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

SO_ATTACH_REUSEPORT_CBPF: Final = 51  # asm-generic/socket.h
SO_DETACH_REUSEPORT_BPF: Final = 68
NO_CHOICE: Final = 0xFFFF_FFFF  # >= any group size: the kernel's hash decides

NON_ESP_MARKER_LEN: Final = 4
IKE_HEADER_LEN: Final = 28
FLAG_INITIATOR: Final = 0x08  # RFC 7296 §3.1 header flags
FLAG_RESPONSE: Final = 0x20

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
LD_W_ABS: Final = 0x20
LD_B_ABS: Final = 0x30
LD_W_LEN: Final = 0x80
ALU_MOD_K: Final = 0x94
JMP_JEQ_K: Final = 0x15
JMP_JGE_K: Final = 0x35
JMP_JSET_K: Final = 0x45
RET_K: Final = 0x06
RET_A: Final = 0x16
MISC_TAX: Final = 0x07
MISC_TXA: Final = 0x87


def owner_of_spi(spi: bytes, workers: int) -> int:
    """The worker that allocated an 8-byte IKE SPI (and owns its IKE SA)."""
    return int.from_bytes(spi[4:8], "big") % workers


def select_worker(payload: bytes, *, nat_t: bool, workers: int, live: Sequence[int]) -> int | None:
    """The steering decision for one UDP payload; None = the kernel's hash decides."""
    o = NON_ESP_MARKER_LEN if nat_t else 0
    if len(payload) < o + IKE_HEADER_LEN:
        return None
    if nat_t and payload[:4] != bytes(4):
        return None
    spi_i, spi_r, flags = payload[o : o + 8], payload[o + 8 : o + 16], payload[o + 19]
    if spi_r == bytes(8):
        if flags & FLAG_RESPONSE:  # SPIr zero names no owner: SPIi's (as the program)
            return owner_of_spi(spi_i, workers)
        if not live:
            return None
        return live[int.from_bytes(spi_i[:4], "big") % len(live)]
    return owner_of_spi(spi_r if flags & FLAG_INITIATOR else spi_i, workers)


# --------------------------------------------------------------------------- program


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


class _Asm:
    """Instructions with symbolic forward jump targets, resolved by `assemble()`."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.items)

    def assemble(self) -> list[Insn]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.items):
            out.append(Insn(code, self._rel(pc, jt), self._rel(pc, jf), k))
        return out

    def _rel(self, pc: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        off = self.labels[target] - pc - 1
        if not 0 <= off <= 255:
            raise ValueError(f"jump to {target} out of range")
        return off


def steering_program(*, nat_t: bool, workers: int, live: Sequence[int]) -> list[Insn]:
    """The classic BPF program for one reuseport group (see the module docstring)."""
    if not 1 <= workers <= 255:
        raise ValueError("workers must be 1..255")
    if any(not 0 <= w < workers for w in live) or list(live) != sorted(set(live)):
        raise ValueError("live workers must be distinct indexes in 0..workers-1, sorted")
    o = NON_ESP_MARKER_LEN if nat_t else 0
    a = _Asm()
    a.op(LD_W_LEN)
    a.op(JMP_JGE_K, o + IKE_HEADER_LEN, jt=0, jf="no_choice")
    if nat_t:
        a.op(LD_W_ABS, 0)
        a.op(JMP_JEQ_K, 0, jt=0, jf="no_choice")
    a.op(LD_B_ABS, o + 19)  # flags
    a.op(MISC_TAX)
    a.op(LD_W_ABS, o + 8)
    a.op(JMP_JEQ_K, 0, jt=0, jf="has_spi_r")
    a.op(LD_W_ABS, o + 12)
    a.op(JMP_JEQ_K, 0, jt=0, jf="has_spi_r")
    a.op(MISC_TXA)
    a.op(JMP_JSET_K, FLAG_RESPONSE, jt="owner_i", jf=0)
    # an IKE_SA_INIT request: a new IKE SA for one of the live workers
    if not live:
        a.op(RET_K, NO_CHOICE)
    else:
        a.op(LD_W_ABS, o)  # SPIi's high word: independent of the owner's (low) word
        a.op(ALU_MOD_K, len(live))
        if list(live) == list(range(workers)):
            a.op(RET_A)
        else:
            for i, w in enumerate(live[:-1]):
                a.op(JMP_JEQ_K, i, jt=0, jf=1)
                a.op(RET_K, w)
            a.op(RET_K, live[-1])
    a.label("has_spi_r")
    a.op(MISC_TXA)
    a.op(JMP_JSET_K, FLAG_INITIATOR, jt="owner_r", jf=0)
    a.label("owner_i")
    a.op(LD_W_ABS, o + 4)
    a.op(ALU_MOD_K, workers)
    a.op(RET_A)
    a.label("owner_r")
    a.op(LD_W_ABS, o + 12)
    a.op(ALU_MOD_K, workers)
    a.op(RET_A)
    a.label("no_choice")
    a.op(RET_K, NO_CHOICE)
    return a.assemble()


def run_cbpf(program: Sequence[Insn], payload: bytes) -> int:
    """Interpret `program` over `payload` like the kernel does (out-of-bounds load: 0)."""
    acc = x = 0
    pc = 0
    while pc < len(program):
        insn = program[pc]
        pc += 1
        code, k = insn.code, insn.k
        if code == LD_W_LEN:
            acc = len(payload)
        elif code in (LD_W_ABS, LD_B_ABS):
            size = 4 if code == LD_W_ABS else 1
            if k + size > len(payload):
                return 0
            acc = int.from_bytes(payload[k : k + size], "big")
        elif code == ALU_MOD_K:
            acc %= k
        elif code == MISC_TAX:
            x = acc
        elif code == MISC_TXA:
            acc = x
        elif code in (JMP_JEQ_K, JMP_JGE_K, JMP_JSET_K):
            taken = {JMP_JEQ_K: acc == k, JMP_JGE_K: acc >= k, JMP_JSET_K: bool(acc & k)}[code]
            pc += insn.jt if taken else insn.jf
        elif code == RET_K:
            return k
        elif code == RET_A:
            return acc
        else:
            raise ValueError(f"opcode {code:#x} not supported")
    raise ValueError("program fell off its end")


def _fprog(program: Sequence[Insn]) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """struct sock_fprog for setsockopt, and the buffer it points to (keep it alive)."""
    raw = b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    return struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf)), buf


def attach(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Attach (or replace) the reuseport group program of the group `sock` is in.
    OSError when the kernel refuses it."""
    fprog, buf = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    del buf
