"""BPF_PROG_TEST_RUN through bpf(2) and ctypes (bcc 0.26 has no wrapper for it).

The kernel runs a loaded program `repeat` times on a copy of `data` and reports the last
return value, the (possibly rewritten) packet and the mean run time in ns. Works for XDP
and TC (sched_cls) programs; the program does not need to be attached anywhere.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from bpf.syscall import BPF_PROG_TEST_RUN, BpfSyscallError, sys_bpf


class TestRunError(BpfSyscallError):
    """The kernel refused the test run (errno set)."""

    __test__ = False  # not a pytest test class


class _TestAttr(ctypes.Structure):
    """The BPF_PROG_TEST_RUN member of union bpf_attr (uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class TestRunResult:
    retval: int
    data: bytes  # the packet after the program ran (the last repeat's view)
    duration_ns: int  # mean ns per run as measured by the kernel

    __test__ = False


def prog_test_run(prog_fd: int, data: bytes, *, repeat: int = 1) -> TestRunResult:
    """Run the program once (or `repeat` times) on `data`."""
    if repeat < 1 or repeat > 0xFFFFFFFF:
        raise ValueError(f"repeat must be 1..2**32-1, not {repeat}")
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    # Room for programs that grow the packet (XDP head/tail adjust).
    out_size = len(data) + 512
    buf_out = ctypes.create_string_buffer(out_size)
    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(data)
    attr.data_size_out = out_size
    attr.data_in = ctypes.addressof(buf_in)
    attr.data_out = ctypes.addressof(buf_out)
    attr.repeat = repeat
    try:
        sys_bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    except BpfSyscallError as e:
        raise TestRunError(e.errno, str(e.strerror)) from None
    return TestRunResult(attr.retval, buf_out.raw[: attr.data_size_out], attr.duration)
