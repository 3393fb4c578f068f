"""BPF links for XDP and TC (tcx): attachments owned by a file descriptor.

A link lives as long as its fd: when the process exits for any reason (SIGKILL and
crashes included) the kernel closes the fd and detaches the program. That is the only
way to guarantee "nothing left attached after exit"; netlink attachments (bcc's
attach_xdp, tc clsact filters) outlive the process. XDP links exist since Linux 5.9,
tcx links since 6.6; the loader falls back to netlink where they are missing.
"""

from __future__ import annotations

import ctypes

from bpf.syscall import BPF_LINK_CREATE, BPF_PROG_QUERY, sys_bpf

# enum bpf_attach_type (uapi/linux/bpf.h)
BPF_XDP = 37
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        # the per-type union that follows (tcx: relative_fd, expected_revision), zeroed
        ("_rest", ctypes.c_uint64 * 4),
    ]


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    """Attach `prog_fd` to the interface `ifindex` of the calling thread's network
    namespace; returns the link fd (close it to detach). For XDP `flags` is the mode
    (XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE); EBUSY when a program is already there."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type)
    attr.flags = flags
    return sys_bpf(BPF_LINK_CREATE, attr, "BPF_LINK_CREATE")


def tcx_prog_ids(ifindex: int, attach_type: int) -> list[int]:
    """IDs of the programs on the tcx hook (BPF_PROG_QUERY; Linux >= 6.6)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type)
    attr.prog_ids = ctypes.addressof(ids)
    attr.prog_cnt = len(ids)
    sys_bpf(BPF_PROG_QUERY, attr, "BPF_PROG_QUERY")
    return list(ids[: attr.prog_cnt])
