"""ctypes mirrors of the structs and enums in bpf/dataplane.h.

tests/unit/test_bpf_abi.py parses the header and checks these against it, so a change
on one side without the other fails a test instead of corrupting map reads.
"""

from __future__ import annotations

import ctypes
import enum

SLOT_BITS_DEFAULT = 16
SLOT_BITS_MAX = 20  # 1,048,576 Child SA slots; 12 random SPI bits stay (bpf/spi.py)
VERDICT_ACTIONS = 8
MAX_STEER_CPUS = 64

SLOT_F_OFFLOADED = 1
SLOT_NONE = 0xFFFFFFFF
STEER_NONE = 0xFFFFFFFF
IKE_BUCKETS = 65536

CFG_DROP_UNKNOWN_SPI = 1
CFG_IKE_RATE_LIMIT = 2
CFG_STEER = 4
CFG_NIC_DECRYPTS = 8
CFG_MSS_CLAMP = 16
CFG_IN_FALLBACK = 32
CFG_IKE_BUDGET = 64


class Reason(enum.IntEnum):
    """enum dp_reason: the one reason each packet ends with (see dataplane.h)."""

    WAN_NON_IP = 1
    WAN_MALFORMED_L2 = 2
    WAN_MALFORMED_IP = 3
    WAN_FRAGMENT = 4
    WAN_OTHER = 5
    WAN_ESP = 6
    WAN_ESP_UNKNOWN_SPI = 7
    WAN_ESP_MALFORMED = 8
    WAN_NATT_KEEPALIVE = 9
    WAN_IKE = 10
    WAN_IKE_RATE_LIMITED = 11
    WAN_IKE_MALFORMED = 12
    OUT_ESP = 13
    OUT_ESP_UNKNOWN_SPI = 14
    OUT_OTHER = 15
    LAN_NO_TUNNEL = 16
    LAN_TUNNEL = 17
    LAN_MSS_CLAMPED = 18
    LAN_MSS_UNCHANGED = 19
    LAN_MSS_MALFORMED = 20
    LAN_MSS_ODD_OFFSET = 21
    LAN_MALFORMED = 22
    LAN_OUT_NO_TUNNEL = 23
    LAN_OUT_TUNNEL = 24
    LAN_OUT_MSS_CLAMPED = 25
    LAN_OUT_MSS_UNCHANGED = 26
    LAN_OUT_MSS_MALFORMED = 27
    LAN_OUT_MSS_ODD_OFFSET = 28
    LAN_OUT_MALFORMED = 29
    WAN_IKE_OVER_BUDGET = 30

    @property
    def side(self) -> str:
        """'wan' or 'lan': the interface the reason is reported under."""
        return "lan" if self.name.startswith("LAN_") else "wan"

    @property
    def label(self) -> str:
        """The Prometheus `reason` label: lower case without the WAN_/LAN_ prefix; egress
        reasons keep theirs (out_esp...) so labels stay unique per interface."""
        prefix, rest = self.name.split("_", 1)
        return (self.name if prefix == "OUT" else rest).lower()


R_MAX = 31
LAN_OUT = Reason.LAN_OUT_NO_TUNNEL - Reason.LAN_NO_TUNNEL


class XdpAction(enum.IntEnum):
    """enum xdp_action (uapi/linux/bpf.h); the TC programs record OK as PASS, SHOT as DROP."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class TcAction(enum.IntEnum):
    """TC_ACT_* (uapi/linux/pkt_cls.h) the TC programs return."""

    OK = 0
    SHOT = 2


class SlotStats(ctypes.Structure):
    _fields_ = [
        ("esp_in_packets", ctypes.c_uint64),
        ("esp_in_bytes", ctypes.c_uint64),
        ("esp_out_packets", ctypes.c_uint64),
        ("esp_out_bytes", ctypes.c_uint64),
        ("clear_to_tunnel_packets", ctypes.c_uint64),
        ("clear_to_tunnel_bytes", ctypes.c_uint64),
        ("clear_from_tunnel_packets", ctypes.c_uint64),
        ("clear_from_tunnel_bytes", ctypes.c_uint64),
    ]


class SlotEntry(ctypes.Structure):
    _fields_ = [
        ("spi", ctypes.c_uint32 * 2),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


class ClampKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class ClampValue(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("mtu", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class IkeBucket(ctypes.Structure):
    _fields_ = [("credit_ns", ctypes.c_uint64), ("last_ns", ctypes.c_uint64)]


class IkeBudget(ctypes.Structure):
    _fields_ = [("credit_ns", ctypes.c_int64), ("last_ns", ctypes.c_uint64)]


class DpConfig(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("hash_seed", ctypes.c_uint32),
        ("ike_cost_ns", ctypes.c_uint64),
        ("ike_burst_ns", ctypes.c_uint64),
        ("budget_cost_ns", ctypes.c_uint64),
        ("budget_burst_ns", ctypes.c_uint64),
        ("jiffy_ns", ctypes.c_uint64),
    ]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "slot_stats": SlotStats,
    "slot_entry": SlotEntry,
    "clamp_key": ClampKey,
    "clamp_value": ClampValue,
    "ike_bucket": IkeBucket,
    "ike_budget": IkeBudget,
    "dp_config": DpConfig,
}
