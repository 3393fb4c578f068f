"""The XFRM codec's struct layouts and numbers agree with the kernel's own header.

A small C program (xfrm_layout_probe.c) is compiled against <linux/xfrm.h> and prints
sizeof/offsetof/constant values; every one is compared with what gateway.xfrm.netlink
and gateway.xfrm.wire declare.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from gateway.xfrm import netlink as nl
from gateway.xfrm import wire

PROBE = Path(__file__).with_name("xfrm_layout_probe.c")


@pytest.fixture(scope="module")
def kernel_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("clang")
    assert cc, "a C compiler is needed (clang is in deploy/debian-packages.txt)"
    exe = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run([cc, "-o", str(exe), str(PROBE)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def offsets(fields: tuple[tuple[str, str], ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    pos = 0
    for name, fmt in fields:
        out.setdefault(name, pos)
        pos += struct.calcsize(fmt)
    return out


LAYOUTS = {
    "xfrm_id": nl.xfrm_id(""),
    "xfrm_selector": nl.xfrm_selector(""),
    "xfrm_lifetime_cfg": nl.xfrm_lifetime_cfg(""),
    "xfrm_lifetime_cur": nl.xfrm_lifetime_cur(""),
    "xfrm_replay_state": nl.REPLAY_STATE,
    "xfrm_replay_state_esn": nl.REPLAY_STATE_ESN,
    "xfrm_algo": nl.ALGO,
    "xfrm_algo_auth": nl.ALGO_AUTH,
    "xfrm_algo_aead": nl.ALGO_AEAD,
    "xfrm_usersa_info": nl.USERSA_INFO,
    "xfrm_usersa_id": nl.USERSA_ID,
    "xfrm_aevent_id": nl.AEVENT_ID,
    "xfrm_userpolicy_info": nl.USERPOLICY_INFO,
    "xfrm_userpolicy_id": nl.USERPOLICY_ID,
    "xfrm_user_tmpl": nl.USER_TMPL,
    "xfrm_encap_tmpl": nl.ENCAP_TMPL,
    "xfrm_user_acquire": nl.USER_ACQUIRE,
    "xfrm_user_expire": nl.USER_EXPIRE,
    "xfrm_user_polexpire": nl.USER_POLEXPIRE,
    "xfrm_user_migrate": nl.USER_MIGRATE,
    "xfrm_user_kmaddress": nl.USER_KMADDRESS,
    "xfrm_userpolicy_type": nl.USERPOLICY_TYPE,
    "xfrm_mark": nl.MARK,
    "xfrm_user_offload": nl.USER_OFFLOAD,
}

FAST = {
    "xfrm_usersa_info": wire.USERSA_INFO,
    "xfrm_usersa_id": wire.USERSA_ID,
    "xfrm_aevent_id": wire.AEVENT_ID,
    "xfrm_userpolicy_info": wire.USERPOLICY_INFO,
    "xfrm_userpolicy_id": wire.USERPOLICY_ID,
    "xfrm_user_tmpl": wire.USER_TMPL,
    "xfrm_encap_tmpl": wire.ENCAP_TMPL,
    "xfrm_algo": wire.ALGO,
    "xfrm_algo_auth": wire.ALGO_AUTH,
    "xfrm_algo_aead": wire.ALGO_AEAD,
    "xfrm_mark": wire.MARK,
    "xfrm_user_offload": wire.USER_OFFLOAD,
}


def test_struct_sizes(kernel_layout: dict[str, int]) -> None:
    for name, fields in LAYOUTS.items():
        assert nl.layout_size(fields) == kernel_layout[f"sizeof.{name}"], name
    for name, compiled in FAST.items():
        assert compiled.size == kernel_layout[f"sizeof.{name}"], name
    replay_esn_head = kernel_layout["sizeof.xfrm_replay_state_esn"]
    assert wire.REPLAY_ESN.size == replay_esn_head
    assert kernel_layout["sizeof.xfrm_usersa_info"] == 224  # PLATFORM.md, x86_64


def test_member_offsets(kernel_layout: dict[str, int]) -> None:
    checked = 0
    for key, value in kernel_layout.items():
        if not key.startswith("offset."):
            continue
        _, struct_name, member = key.split(".", 2)
        ours = offsets(LAYOUTS[struct_name])
        assert ours[member.replace(".", "_")] == value, key
        checked += 1
    assert checked > 50


def test_constants(kernel_layout: dict[str, int]) -> None:
    attrs = {name: num for num, name, _ in nl.xfrm_nla_mixin.nla_map}
    for key, value in kernel_layout.items():
        if not key.startswith("const."):
            continue
        name = key.split(".", 1)[1]
        if name.startswith("XFRMA_"):
            assert attrs[name] == value, name
        else:
            assert getattr(nl, name) == value, name
