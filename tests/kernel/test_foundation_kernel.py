"""Kernel layer foundation: real ESP in the kernel (inside the VM on machines without it).

Uses only `ip xfrm` so it checks the platform, not our backend: an AES-GCM ESP state and
policy read back as installed, and pings between two namespaces really cross as ESP.
"""

from __future__ import annotations

import re

from gateway import probe
from gateway.netns import Netns

KEY_AB = "0x" + "a1" * 36  # AES-256 key + 4-byte salt (RFC 4106)
KEY_BA = "0x" + "b2" * 36


def add_state(ns: Netns, src: str, dst: str, spi: str, key: str) -> None:
    ns.ip(
        "xfrm",
        "state",
        "add",
        "src",
        src,
        "dst",
        dst,
        "proto",
        "esp",
        "spi",
        spi,
        "reqid",
        "7",
        "mode",
        "transport",
        "aead",
        "rfc4106(gcm(aes))",
        key,
        "128",
    )


def add_policy(ns: Netns, src: str, dst: str, direction: str) -> None:
    ns.ip(
        "xfrm",
        "policy",
        "add",
        "src",
        f"{src}/32",
        "dst",
        f"{dst}/32",
        "dir",
        direction,
        "tmpl",
        "src",
        src,
        "dst",
        dst,
        "proto",
        "esp",
        "reqid",
        "7",
        "mode",
        "transport",
    )


def esp_packets(ns: Netns, spi: str) -> int:
    out = ns.ip(
        "-s",
        "xfrm",
        "state",
        "get",
        "src",
        "0.0.0.0",
        "dst",
        "0.0.0.0",
        "proto",
        "esp",
        "spi",
        spi,
        check=False,
    ).stdout
    if not out:
        out = ns.ip("-s", "xfrm", "state", "list", "spi", spi).stdout
    m = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", out)
    assert m, out
    return int(m.group(2))


def test_probe_sees_kernel_esp() -> None:
    assert probe.kernel_esp().ok


def test_ping_crosses_as_esp_between_namespaces(netns_pair: tuple[Netns, Netns]) -> None:
    a, b = netns_pair
    for ns, (me, peer) in ((a, ("192.0.2.1", "192.0.2.2")), (b, ("192.0.2.2", "192.0.2.1"))):
        add_state(ns, "192.0.2.1", "192.0.2.2", "0x1001", KEY_AB)
        add_state(ns, "192.0.2.2", "192.0.2.1", "0x1002", KEY_BA)
        add_policy(ns, me, peer, "out")
        add_policy(ns, peer, me, "in")

    state = a.ip("xfrm", "state", "list", "spi", "0x1001").stdout
    assert "proto esp spi 0x00001001 reqid 7 mode transport" in state
    assert "aead rfc4106(gcm(aes))" in state
    policy = a.ip("xfrm", "policy", "list", "dir", "out").stdout
    assert "src 192.0.2.1/32 dst 192.0.2.2/32" in policy
    assert "tmpl src 192.0.2.1 dst 192.0.2.2" in policy

    a.run("ping", "-c", "3", "-i", "0.2", "-W", "5", "192.0.2.2", timeout=60)
    assert esp_packets(a, "0x1001") >= 3  # a encrypted its echo requests
    assert esp_packets(b, "0x1001") >= 3  # b decrypted them
    assert esp_packets(b, "0x1002") >= 3  # and encrypted the replies
