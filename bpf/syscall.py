"""The bpf(2) system call through ctypes, for the commands bcc 0.26 does not wrap
(BPF_PROG_TEST_RUN, BPF_LINK_CREATE, BPF_PROG_QUERY). Attribute structs mirror the
members of union bpf_attr in uapi/linux/bpf.h."""

from __future__ import annotations

import ctypes
import os
import platform

# enum bpf_cmd
BPF_PROG_TEST_RUN = 10
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSyscallError(OSError):
    """bpf(2) failed; errno and the command are in the message."""


def sys_bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """Call bpf(cmd, &attr, sizeof(attr)); return the result or raise BpfSyscallError."""
    try:
        nr = _SYS_BPF[platform.machine()]
    except KeyError:
        raise BpfSyscallError(0, f"bpf(2) number unknown for {platform.machine()}") from None
    rc = int(_libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise BpfSyscallError(err, f"{what}: {os.strerror(err)}")
    return rc
