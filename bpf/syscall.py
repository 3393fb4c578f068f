"""The bpf(2) system call through ctypes, for the commands bcc 0.26 does not wrap
(BPF_PROG_TEST_RUN, BPF_LINK_CREATE, BPF_PROG_QUERY, the map batch operations).
Attribute structs mirror the members of union bpf_attr in uapi/linux/bpf.h."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Any

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


BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26


class _BatchAttr(ctypes.Structure):
    """The BPF_MAP_*_BATCH member of union bpf_attr."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def array_lookup_batch(map_fd: int, count: int, value_size: int) -> bytearray:
    """Values of keys 0 .. count-1 of an array map (value_size bytes each; for a per-CPU
    map that is round_up(value size, 8) * possible CPUs), in ONE bpf(2) call."""
    keys = (ctypes.c_uint32 * max(count, 1))()
    values = bytearray(value_size * count)
    if count == 0:
        return values
    vbuf = (ctypes.c_char * len(values)).from_buffer(values)
    out = ctypes.c_uint32()
    attr = _BatchAttr()
    attr.in_batch = 0  # from the first key
    attr.out_batch = ctypes.addressof(out)
    attr.keys = ctypes.addressof(keys)
    attr.values = ctypes.addressof(vbuf)
    attr.count = count
    attr.map_fd = map_fd
    try:
        sys_bpf(BPF_MAP_LOOKUP_BATCH, attr, "BPF_MAP_LOOKUP_BATCH")
    except BpfSyscallError as e:
        if e.errno != errno.ENOENT:  # ENOENT: the map ended; count says how many came
            raise
    del vbuf
    if attr.count != count:
        raise BpfSyscallError(errno.EIO, f"BPF_MAP_LOOKUP_BATCH: {attr.count} of {count} keys")
    return values


def update_batch(
    map_fd: int, keys: ctypes.Array[Any], values: ctypes.Array[Any], count: int
) -> None:
    """BPF_MAP_UPDATE_BATCH: `count` keys and values (C arrays) in ONE bpf(2) call."""
    attr = _BatchAttr()
    attr.keys = ctypes.addressof(keys)
    attr.values = ctypes.addressof(values)
    attr.count = count
    attr.map_fd = map_fd
    sys_bpf(BPF_MAP_UPDATE_BATCH, attr, "BPF_MAP_UPDATE_BATCH")


def array_update_batch(map_fd: int, first: int, values: bytes, value_size: int) -> None:
    """Write keys first .. first+n-1 of an array map from `values` in ONE bpf(2) call."""
    count = len(values) // value_size
    if count == 0:
        return
    keys = (ctypes.c_uint32 * count)(*range(first, first + count))
    update_batch(map_fd, keys, ctypes.create_string_buffer(bytes(values), len(values)), count)
