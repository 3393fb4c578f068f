"""The ctypes mirrors in bpf/abi.py agree with bpf/dataplane.h (parsed here as text)."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from bpf import abi

HEADER = (Path(abi.__file__).parent / "dataplane.h").read_text()
C_TYPES = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
    "__s64": ctypes.c_int64,
}


def header_structs() -> dict[str, list[tuple[str, str, int]]]:
    """struct name -> [(field, C type, array length or 0)]"""
    out = {}
    for name, body in re.findall(r"struct (\w+) \{(.*?)\};", HEADER, re.S):
        fields = []
        for ctype, field, count in re.findall(r"(__[us]\d+) (\w+)(?:\[(\d+)\])?;", body):
            fields.append((field, ctype, int(count or 0)))
        out[name] = fields
    return out


def header_defines() -> dict[str, int]:
    return {
        k: int(v.rstrip("u"), 0)
        for k, v in re.findall(r"#define (\w+) (0x[0-9a-fA-F]+u?|\d+u?)\b", HEADER)
    }


def test_every_header_struct_has_a_mirror() -> None:
    assert set(header_structs()) == set(abi.STRUCTS)


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_struct_fields_and_layout_match(name: str) -> None:
    mirror = abi.STRUCTS[name]
    fields = header_structs()[name]
    assert [f for f, _, _ in fields] == [f[0] for f in mirror._fields_]
    for (field, ctype, count), spec in zip(fields, mirror._fields_, strict=True):
        mtype = spec[1]
        want = C_TYPES[ctype] * count if count else C_TYPES[ctype]
        assert ctypes.sizeof(mtype) == ctypes.sizeof(want), field
        assert getattr(mirror, field).offset % ctypes.alignment(C_TYPES[ctype]) == 0
    size = sum(ctypes.sizeof(C_TYPES[t]) * (n or 1) for _, t, n in fields)
    assert ctypes.sizeof(mirror) == size  # no hidden padding on either side


def test_reasons_match_the_enum() -> None:
    body = re.search(r"enum dp_reason \{(.*?)\};", HEADER, re.S)
    assert body
    values = dict(re.findall(r"R_(\w+) = (\d+)", body.group(1)))
    r_max = int(values.pop("MAX"))
    assert {k: int(v) for k, v in values.items()} == {r.name: r.value for r in abi.Reason}
    assert r_max == abi.R_MAX == max(abi.Reason) + 1


def test_constants_match() -> None:
    d = header_defines()
    for name in (
        "VERDICT_ACTIONS",
        "MAX_STEER_CPUS",
        "SLOT_F_OFFLOADED",
        "CFG_DROP_UNKNOWN_SPI",
        "CFG_IKE_RATE_LIMIT",
        "CFG_STEER",
        "CFG_NIC_DECRYPTS",
        "CFG_MSS_CLAMP",
        "CFG_IN_FALLBACK",
        "CFG_IKE_BUDGET",
        "SLOT_NONE",
        "STEER_NONE",
        "IKE_BUCKETS",
    ):
        assert d[name] == getattr(abi, name), name
    assert d["SLOT_BITS"] == abi.SLOT_BITS_DEFAULT
    assert max(abi.XdpAction) < abi.VERDICT_ACTIONS


def test_lan_egress_reasons_mirror_ingress_at_a_fixed_offset() -> None:
    """dataplane.c computes an egress reason as its ingress cousin + LAN_OUT."""
    lan_in = [r for r in abi.Reason if r.name.startswith("LAN_") and "_OUT_" not in r.name]
    for r in lan_in:
        twin = abi.Reason[r.name.replace("LAN_", "LAN_OUT_", 1)]
        assert twin == r + abi.LAN_OUT
    assert "#define LAN_OUT (R_LAN_OUT_NO_TUNNEL - R_LAN_NO_TUNNEL)" in HEADER


def test_reason_labels_are_unique_per_interface() -> None:
    labels = [(r.side, r.label) for r in abi.Reason]
    assert len(labels) == len(set(labels))
    assert abi.Reason.WAN_ESP.label == "esp"
    assert abi.Reason.OUT_ESP.label == "out_esp"
    assert abi.Reason.LAN_MSS_CLAMPED.side == "lan"
    assert abi.Reason.LAN_OUT_MSS_CLAMPED.label == "out_mss_clamped"
