"""The XFRM netlink family (NETLINK_XFRM) on pyroute2's message and attribute classes.

pyroute2 0.9.7 knows the XFRM *interface* link kind but not the XFRM family itself, so the
messages of include/uapi/linux/xfrm.h are declared here the pyroute2 way: an `nlmsg`
subclass per payload struct (`fields`) plus the XFRMA_* attribute table (`nla_map`),
and a `Marshal` that maps message types to classes. Nested C structs are flattened
with a prefix (`sel_daddr`, `id_spi`, `lft_soft_byte_limit`, ...); explicit `__pad`
fields reproduce the C compiler's padding on x86_64/aarch64 (tests/unit/test_xfrm_layout.py
compiles the kernel header and checks every size and offset).

Field value conventions: addresses are 16-byte strings (IPv4 in the first four bytes),
ports and SPIs are in host order here and big-endian on the wire ('>H', '>I').
"""

from __future__ import annotations

import struct
from typing import Any

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.marshal import Marshal

NETLINK_XFRM = 6

# Message types (enum starting at XFRM_MSG_BASE = 0x10).
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
XFRM_MSG_NEWAE = 0x1E
XFRM_MSG_GETAE = 0x1F
XFRM_MSG_REPORT = 0x20
XFRM_MSG_MIGRATE = 0x21

MSG_NAMES = {
    XFRM_MSG_NEWSA: "NEWSA",
    XFRM_MSG_DELSA: "DELSA",
    XFRM_MSG_GETSA: "GETSA",
    XFRM_MSG_NEWPOLICY: "NEWPOLICY",
    XFRM_MSG_DELPOLICY: "DELPOLICY",
    XFRM_MSG_GETPOLICY: "GETPOLICY",
    XFRM_MSG_ACQUIRE: "ACQUIRE",
    XFRM_MSG_EXPIRE: "EXPIRE",
    XFRM_MSG_UPDPOLICY: "UPDPOLICY",
    XFRM_MSG_UPDSA: "UPDSA",
    XFRM_MSG_POLEXPIRE: "POLEXPIRE",
    XFRM_MSG_NEWAE: "NEWAE",
    XFRM_MSG_GETAE: "GETAE",
    XFRM_MSG_MIGRATE: "MIGRATE",
}

# Multicast groups (enum xfrm_nlgroups): numbers for NETLINK_ADD_MEMBERSHIP.
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2  # EXPIRE and POLEXPIRE
XFRMNLGRP_SA = 3
XFRMNLGRP_POLICY = 4
XFRMNLGRP_AEVENTS = 5
XFRMNLGRP_MIGRATE = 7

XFRM_INF = (1 << 64) - 1

XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1

XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_POLICY_TYPE_MAIN = 0

XFRM_STATE_NOECN = 1
XFRM_STATE_DECAP_DSCP = 2
XFRM_STATE_NOPMTUDISC = 4
XFRM_STATE_WILDRECV = 8
XFRM_STATE_ICMP = 16
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ALIGN4 = 64
XFRM_STATE_ESN = 128

XFRM_OFFLOAD_IPV6 = 1
XFRM_OFFLOAD_INBOUND = 2
XFRM_OFFLOAD_PACKET = 4

XFRM_AE_RVAL = 2
XFRM_AE_LVAL = 4

# XFRMA_SA_DIR appeared in Linux 6.10 (after XFRMA_MTIMER_THRESH = 32).
XFRM_SA_DIR_IN = 1
XFRM_SA_DIR_OUT = 2

UDP_ENCAP_ESPINUDP = 2  # include/uapi/linux/udp.h
IPPROTO_ESP = 50

# ---------------------------------------------------------------------------------------
# Struct layouts, flattened. Each function returns the fields with a name prefix.


def address(name: str) -> tuple[tuple[str, str], ...]:
    """xfrm_address_t: a 16-byte union (IPv4 uses the first four bytes)."""
    return ((name, "16s"),)


def xfrm_id(p: str) -> tuple[tuple[str, str], ...]:
    return (*address(p + "daddr"), (p + "spi", ">I"), (p + "proto", "B"), ("__pad", "3x"))


def xfrm_selector(p: str) -> tuple[tuple[str, str], ...]:
    return (
        *address(p + "daddr"),
        *address(p + "saddr"),
        (p + "dport", ">H"),
        (p + "dport_mask", ">H"),
        (p + "sport", ">H"),
        (p + "sport_mask", ">H"),
        (p + "family", "H"),
        (p + "prefixlen_d", "B"),
        (p + "prefixlen_s", "B"),
        (p + "proto", "B"),
        ("__pad", "3x"),
        (p + "ifindex", "i"),
        (p + "user", "I"),
    )


LIFETIME_CFG_NAMES = (
    "soft_byte_limit",
    "hard_byte_limit",
    "soft_packet_limit",
    "hard_packet_limit",
    "soft_add_expires_seconds",
    "hard_add_expires_seconds",
    "soft_use_expires_seconds",
    "hard_use_expires_seconds",
)
LIFETIME_CUR_NAMES = ("bytes", "packets", "add_time", "use_time")


def xfrm_lifetime_cfg(p: str) -> tuple[tuple[str, str], ...]:
    return tuple((p + n, "Q") for n in LIFETIME_CFG_NAMES)


def xfrm_lifetime_cur(p: str) -> tuple[tuple[str, str], ...]:
    return tuple((p + n, "Q") for n in LIFETIME_CUR_NAMES)


def xfrm_usersa_info(p: str = "") -> tuple[tuple[str, str], ...]:
    return (
        *xfrm_selector(p + "sel_"),
        *xfrm_id(p + "id_"),
        *address(p + "saddr"),
        *xfrm_lifetime_cfg(p + "lft_"),
        *xfrm_lifetime_cur(p + "curlft_"),
        (p + "stats_replay_window", "I"),
        (p + "stats_replay", "I"),
        (p + "stats_integrity_failed", "I"),
        (p + "seq", "I"),
        (p + "reqid", "I"),
        (p + "family", "H"),
        (p + "mode", "B"),
        (p + "replay_window", "B"),
        (p + "flags", "B"),
        ("__pad", "7x"),
    )


def xfrm_usersa_id(p: str = "") -> tuple[tuple[str, str], ...]:
    return (
        *address(p + "daddr"),
        (p + "spi", ">I"),
        (p + "family", "H"),
        (p + "proto", "B"),
        ("__pad", "1x"),
    )


def xfrm_userpolicy_info(p: str = "") -> tuple[tuple[str, str], ...]:
    return (
        *xfrm_selector(p + "sel_"),
        *xfrm_lifetime_cfg(p + "lft_"),
        *xfrm_lifetime_cur(p + "curlft_"),
        (p + "priority", "I"),
        (p + "index", "I"),
        (p + "dir", "B"),
        (p + "action", "B"),
        (p + "flags", "B"),
        (p + "share", "B"),
        ("__pad", "4x"),
    )


def xfrm_userpolicy_id(p: str = "") -> tuple[tuple[str, str], ...]:
    return (*xfrm_selector(p + "sel_"), (p + "index", "I"), (p + "dir", "B"), ("__pad", "3x"))


USERSA_INFO = xfrm_usersa_info()
USERSA_ID = xfrm_usersa_id()
USERPOLICY_INFO = xfrm_userpolicy_info()
USERPOLICY_ID = xfrm_userpolicy_id()
AEVENT_ID = (
    *xfrm_usersa_id("sa_id_"),
    *address("saddr"),
    ("flags", "I"),
    ("reqid", "I"),
)
USER_EXPIRE = (*xfrm_usersa_info("state_"), ("hard", "B"), ("__pad", "7x"))
USER_POLEXPIRE = (*xfrm_userpolicy_info("pol_"), ("hard", "B"), ("__pad", "7x"))
USER_ACQUIRE = (
    *xfrm_id("id_"),
    *address("saddr"),
    *xfrm_selector("sel_"),
    *xfrm_userpolicy_info("policy_"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
    ("seq", "I"),
)
USER_TMPL = (
    *xfrm_id("id_"),
    ("family", "H"),
    ("__pad", "2x"),
    *address("saddr"),
    ("reqid", "I"),
    ("mode", "B"),
    ("share", "B"),
    ("optional", "B"),
    ("__pad", "1x"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
)
ENCAP_TMPL = (
    ("encap_type", "H"),
    ("encap_sport", ">H"),
    ("encap_dport", ">H"),
    ("__pad", "2x"),
    *address("encap_oa"),
)
USER_MIGRATE = (
    *address("old_daddr"),
    *address("old_saddr"),
    *address("new_daddr"),
    *address("new_saddr"),
    ("proto", "B"),
    ("mode", "B"),
    ("reserved", "H"),
    ("reqid", "I"),
    ("old_family", "H"),
    ("new_family", "H"),
)
USER_KMADDRESS = (
    *address("local"),
    *address("remote"),
    ("reserved", "I"),
    ("family", "H"),
    ("__pad", "2x"),
)
REPLAY_STATE = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))
REPLAY_STATE_ESN = (
    ("bmp_len", "I"),
    ("oseq", "I"),
    ("seq", "I"),
    ("oseq_hi", "I"),
    ("seq_hi", "I"),
    ("replay_window", "I"),
)
MARK = (("v", "I"), ("m", "I"))
USER_OFFLOAD = (("ifindex", "i"), ("flags", "B"), ("__pad", "3x"))
USERPOLICY_TYPE = (
    ("type", "B"),
    ("__pad", "1x"),
    ("reserved1", "H"),
    ("reserved2", "B"),
    ("__pad", "1x"),
)
USERSA_FLUSH = (("proto", "B"),)
ALGO = (("alg_name", "64s"), ("alg_key_len", "I"))
ALGO_AUTH = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))
ALGO_AEAD = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))


def _defaults(fields: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """pyroute2 encodes a missing field as 0; byte-string fields need b"" instead."""
    return {name: b"" for name, fmt in fields if fmt.endswith("s")}


def layout_size(fields: tuple[tuple[str, str], ...]) -> int:
    """Bytes the fields take when encoded one after another (as pyroute2 does)."""
    return sum(struct.calcsize(fmt) for _, fmt in fields)


# ---------------------------------------------------------------------------------------
# Attributes


class _keyed(nla):
    """An algorithm attribute: fixed fields followed by the key (alg_key_len bits)."""

    __slots__ = ()

    def encode(self) -> None:
        self["alg_key_len"] = len(self.get("alg_key", b"")) * 8
        nla.encode(self)

    def decode(self) -> None:
        nla.decode(self)
        start = self.offset + 4 + layout_size(self.fields[:-1])
        self["alg_key"] = bytes(self.data[start : start + self["alg_key_len"] // 8])


def _fields_with_key(base: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return (*base, ("alg_key", "s"))


class xfrm_nla_mixin:
    """The XFRMA_* table shared by every message carrying attributes."""

    prefix = "XFRMA_"
    nla_map = (
        (0, "XFRMA_UNSPEC", "none"),
        (1, "XFRMA_ALG_AUTH", "xfrm_algo"),
        (2, "XFRMA_ALG_CRYPT", "xfrm_algo"),
        (3, "XFRMA_ALG_COMP", "xfrm_algo"),
        (4, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (5, "XFRMA_TMPL", "xfrm_user_tmpl"),
        (6, "XFRMA_SA", "xfrm_usersa_info_nla"),
        (7, "XFRMA_POLICY", "xfrm_userpolicy_info_nla"),
        (8, "XFRMA_SEC_CTX", "hex"),
        (9, "XFRMA_LTIME_VAL", "xfrm_lifetime_cur"),
        (10, "XFRMA_REPLAY_VAL", "xfrm_replay_state"),
        (11, "XFRMA_REPLAY_THRESH", "uint32"),
        (12, "XFRMA_ETIMER_THRESH", "uint32"),
        (13, "XFRMA_SRCADDR", "xfrm_address"),
        (14, "XFRMA_COADDR", "xfrm_address"),
        (15, "XFRMA_LASTUSED", "uint64"),
        (16, "XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
        (17, "XFRMA_MIGRATE", "xfrm_user_migrate"),
        (18, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (19, "XFRMA_KMADDRESS", "xfrm_user_kmaddress"),
        (20, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
        (21, "XFRMA_MARK", "xfrm_mark"),
        (22, "XFRMA_TFCPAD", "uint32"),
        (23, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (25, "XFRMA_PROTO", "uint8"),
        (26, "XFRMA_ADDRESS_FILTER", "hex"),
        (27, "XFRMA_PAD", "hex"),
        (28, "XFRMA_OFFLOAD_DEV", "xfrm_user_offload"),
        (29, "XFRMA_SET_MARK", "uint32"),
        (30, "XFRMA_SET_MARK_MASK", "uint32"),
        (31, "XFRMA_IF_ID", "uint32"),
        (32, "XFRMA_MTIMER_THRESH", "uint32"),
        (33, "XFRMA_SA_DIR", "uint8"),
    )

    class xfrm_algo(_keyed):
        fields = _fields_with_key(ALGO)
        defaults = _defaults(fields)

    class xfrm_algo_auth(_keyed):
        fields = _fields_with_key(ALGO_AUTH)
        defaults = _defaults(fields)

    class xfrm_algo_aead(_keyed):
        fields = _fields_with_key(ALGO_AEAD)
        defaults = _defaults(fields)

    class xfrm_encap_tmpl(nla):
        fields = ENCAP_TMPL
        defaults = _defaults(fields)

    class xfrm_user_tmpl(nla):
        """XFRMA_TMPL: one or more templates back to back."""

        fields = (("templates", "s"),)
        defaults = _defaults(fields)

        def encode(self) -> None:
            templates = self.get("templates") or []
            if isinstance(templates, list):  # as decode() returns them: a list of dicts
                self["templates"] = b"".join(pack_fields(USER_TMPL, t) for t in templates)
            nla.encode(self)

        def decode(self) -> None:
            nla.decode(self)
            size = layout_size(USER_TMPL)
            start, end = self.offset + 4, self.offset + self.length
            self["templates"] = [
                unpack_fields(USER_TMPL, bytes(self.data[o : o + size]))
                for o in range(start, end - size + 1, size)
            ]

    class xfrm_usersa_info_nla(nla):
        fields = USERSA_INFO
        defaults = _defaults(fields)

    class xfrm_userpolicy_info_nla(nla):
        fields = USERPOLICY_INFO
        defaults = _defaults(fields)

    class xfrm_lifetime_cur(nla):
        fields = xfrm_lifetime_cur("")
        defaults = _defaults(fields)

    class xfrm_replay_state(nla):
        fields = REPLAY_STATE
        defaults = _defaults(fields)

    class xfrm_address(nla):
        fields = address("addr")
        defaults = _defaults(fields)

    class xfrm_userpolicy_type(nla):
        fields = USERPOLICY_TYPE
        defaults = _defaults(fields)

    class xfrm_user_migrate(nla):
        """XFRMA_MIGRATE: one or more xfrm_user_migrate back to back."""

        fields = (("raw", "s"),)
        defaults = _defaults(fields)

        def encode(self) -> None:
            self["raw"] = b"".join(pack_fields(USER_MIGRATE, m) for m in self.get("migrate", []))
            nla.encode(self)

        def decode(self) -> None:
            nla.decode(self)
            size = layout_size(USER_MIGRATE)
            start, end = self.offset + 4, self.offset + self.length
            self["migrate"] = [
                unpack_fields(USER_MIGRATE, bytes(self.data[o : o + size]))
                for o in range(start, end - size + 1, size)
            ]

    class xfrm_user_kmaddress(nla):
        fields = USER_KMADDRESS
        defaults = _defaults(fields)

    class xfrm_mark(nla):
        fields = MARK
        defaults = _defaults(fields)

    class xfrm_replay_state_esn(nla):
        fields = (*REPLAY_STATE_ESN, ("bmp", "s"))
        defaults = _defaults(fields)

        def decode(self) -> None:
            nla.decode(self)
            start = self.offset + 4 + layout_size(REPLAY_STATE_ESN)
            n = self["bmp_len"]
            self["bmp"] = list(struct.unpack_from(f"{n}I", self.data, start))

        def encode(self) -> None:
            bmp = self.get("bmp") or [0] * self["bmp_len"]
            self["bmp"] = struct.pack(f"{len(bmp)}I", *bmp)
            nla.encode(self)

    class xfrm_user_offload(nla):
        fields = USER_OFFLOAD
        defaults = _defaults(fields)


class xfrm_usersa_info_msg(xfrm_nla_mixin, nlmsg):
    """NEWSA / UPDSA requests and GETSA replies."""

    fields = USERSA_INFO
    defaults = _defaults(fields)


class xfrm_usersa_id_msg(xfrm_nla_mixin, nlmsg):
    """DELSA / GETSA requests (and DELSA multicast)."""

    fields = USERSA_ID
    defaults = _defaults(fields)


class xfrm_userpolicy_info_msg(xfrm_nla_mixin, nlmsg):
    """NEWPOLICY / UPDPOLICY requests and GETPOLICY replies."""

    fields = USERPOLICY_INFO
    defaults = _defaults(fields)


class xfrm_userpolicy_id_msg(xfrm_nla_mixin, nlmsg):
    """DELPOLICY / GETPOLICY requests; MIGRATE carries it too."""

    fields = USERPOLICY_ID
    defaults = _defaults(fields)


class xfrm_aevent_id_msg(xfrm_nla_mixin, nlmsg):
    """NEWAE / GETAE: replay and lifetime values of one SA."""

    fields = AEVENT_ID
    defaults = _defaults(fields)


class xfrm_user_expire_msg(xfrm_nla_mixin, nlmsg):
    fields = USER_EXPIRE
    defaults = _defaults(fields)


class xfrm_user_polexpire_msg(xfrm_nla_mixin, nlmsg):
    fields = USER_POLEXPIRE
    defaults = _defaults(fields)


class xfrm_user_acquire_msg(xfrm_nla_mixin, nlmsg):
    fields = USER_ACQUIRE
    defaults = _defaults(fields)


class xfrm_usersa_flush_msg(nlmsg):
    fields = (*USERSA_FLUSH, ("__pad", "3x"))
    defaults = _defaults(fields)


class MarshalXfrm(Marshal):
    msg_map = {
        XFRM_MSG_NEWSA: xfrm_usersa_info_msg,
        XFRM_MSG_UPDSA: xfrm_usersa_info_msg,
        XFRM_MSG_DELSA: xfrm_usersa_id_msg,
        XFRM_MSG_GETSA: xfrm_usersa_id_msg,
        XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info_msg,
        XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info_msg,
        XFRM_MSG_DELPOLICY: xfrm_userpolicy_id_msg,
        XFRM_MSG_GETPOLICY: xfrm_userpolicy_id_msg,
        XFRM_MSG_NEWAE: xfrm_aevent_id_msg,
        XFRM_MSG_GETAE: xfrm_aevent_id_msg,
        XFRM_MSG_EXPIRE: xfrm_user_expire_msg,
        XFRM_MSG_POLEXPIRE: xfrm_user_polexpire_msg,
        XFRM_MSG_ACQUIRE: xfrm_user_acquire_msg,
        XFRM_MSG_MIGRATE: xfrm_userpolicy_id_msg,
        XFRM_MSG_FLUSHSA: xfrm_usersa_flush_msg,
    }


# ---------------------------------------------------------------------------------------
# Plain struct helpers for the arrays pyroute2 has no field type for.


def pack_fields(fields: tuple[tuple[str, str], ...], values: dict[str, Any]) -> bytes:
    out = bytearray()
    for name, fmt in fields:
        if fmt.endswith("x"):
            out += bytes(struct.calcsize(fmt))
        else:
            out += struct.pack(fmt, values.get(name, 0 if not fmt.endswith("s") else b""))
    return bytes(out)


def unpack_fields(fields: tuple[tuple[str, str], ...], data: bytes) -> dict[str, Any]:
    values: dict[str, Any] = {}
    offset = 0
    for name, fmt in fields:
        size = struct.calcsize(fmt)
        if not fmt.endswith("x"):
            (values[name],) = struct.unpack_from(fmt, data, offset)
        offset += size
    return values
