"""Helpers for the XFRM kernel tests: addressing, encap sockets, traffic, `ip xfrm` parsing."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

from gateway.netns import Netns
from gateway.xfrm import ChildSaSpec, EspTransform, SaKeys, TrafficSelector, UdpEncap
from gateway.xfrm.bypass import enable_esp_in_udp
from gateway.xfrm.channel import in_netns
from gateway.xfrm.spec import Mode

GCM = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128)
CBC_SHA256 = EspTransform(crypt="cbc(aes)", integ="hmac(sha256)", trunc_bits=128)


@dataclass(frozen=True)
class Plan:
    """Addresses of one test case (a = initiator side, b = responder side)."""

    outer_a: str
    outer_b: str
    inner_a: str | None = None  # tunnel mode: a host behind each gateway
    inner_b: str | None = None
    net_a: str | None = None
    net_b: str | None = None

    @property
    def target_b(self) -> str:
        return self.inner_b or self.outer_b

    @property
    def source_a(self) -> str:
        return self.inner_a or self.outer_a


V4_TUNNEL = Plan("192.0.2.1", "192.0.2.2", "10.1.0.1", "10.2.0.1", "10.1.0.0/24", "10.2.0.0/24")
V6_TUNNEL = Plan(
    "2001:db8::1", "2001:db8::2", "fd00:1::1", "fd00:2::1", "fd00:1::/64", "fd00:2::/64"
)
V4_TRANSPORT = Plan("192.0.2.1", "192.0.2.2")
V6_TRANSPORT = Plan("2001:db8::1", "2001:db8::2")


def add_foreign_policy(ns: Netns) -> None:
    """A tunnel policy as another IKE daemon would install it (reqid 7, not in our range)."""
    ns.ip(
        *"xfrm policy add src 10.7.0.0/16 dst 10.8.0.0/16 dir out "
        "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 7 mode tunnel".split()
    )


def setup_inner(a: Netns, b: Netns, plan: Plan) -> None:
    """Tunnel mode: a host address on lo behind each side and a route to the other."""
    assert plan.inner_a and plan.inner_b and plan.net_a and plan.net_b
    for ns, inner, peer_net, peer_outer in (
        (a, plan.inner_a, plan.net_b, plan.outer_b),
        (b, plan.inner_b, plan.net_a, plan.outer_a),
    ):
        v6 = ":" in inner
        ns.ip("addr", "add", inner + ("/128" if v6 else "/32"), "dev", "lo")
        ns.ip(*(["-6"] if v6 else []), "route", "add", peer_net, "via", peer_outer, "src", inner)


def keys(seed: int, n: int = 20) -> SaKeys:
    return SaKeys(bytes((seed + i) % 256 for i in range(n)))


def key_pair(esp: EspTransform, seed: int) -> tuple[SaKeys, SaKeys]:
    """Keys of a's outbound and b's outbound direction."""
    if esp.aead:
        return keys(seed), keys(seed + 100)
    return (
        SaKeys(keys(seed, 16).encr, keys(seed + 50, 32).encr),
        SaKeys(keys(seed + 100, 16).encr, keys(seed + 150, 32).encr),
    )


def spec_pair(
    plan: Plan,
    reqid: int,
    *,
    mode: Mode,
    encap: bool,
    spi_base: int = 0xC0000100,
    esp: EspTransform = GCM,
    **kw: Any,
) -> tuple[ChildSaSpec, ChildSaSpec]:
    """Mirror-image specs for side a and side b (a's out keys are b's in keys)."""
    ka, kb = key_pair(esp, 1)
    oa, ob = ipaddress.ip_address(plan.outer_a), ipaddress.ip_address(plan.outer_b)
    ts_a = (TrafficSelector.parse(plan.net_a),) if plan.net_a else ()
    ts_b = (TrafficSelector.parse(plan.net_b),) if plan.net_b else ()
    enc = UdpEncap(4500, 4500) if encap else None
    spi_a, spi_b = spi_base + 1, spi_base + 2  # a's inbound SPI, b's inbound SPI
    a = ChildSaSpec(
        local=oa,
        remote=ob,
        spi_in=spi_a,
        spi_out=spi_b,
        reqid=reqid,
        esp=esp,
        keys_in=kb,
        keys_out=ka,
        local_ts=ts_a,
        remote_ts=ts_b,
        mode=mode,
        encap=enc,
        **kw,
    )
    b = ChildSaSpec(
        local=ob,
        remote=oa,
        spi_in=spi_b,
        spi_out=spi_a,
        reqid=reqid,
        esp=esp,
        keys_in=ka,
        keys_out=kb,
        local_ts=ts_b,
        remote_ts=ts_a,
        mode=mode,
        encap=enc,
        **kw,
    )
    return a, b


def encap_socket(ns: Netns, v6: bool, port: int = 4500) -> socket.socket:
    """What an IKE daemon holds open: a UDP socket that hands ESP-in-UDP to XFRM."""
    with in_netns(ns.name):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    enable_esp_in_udp(s)
    s.bind(("::" if v6 else "0.0.0.0", port))
    return s


def ping(ns: Netns, src: str, dst: str, count: int = 3, peer: Netns | None = None) -> None:
    proc = ns.run(
        "ping", "-c", str(count), "-i", "0.3", "-W", "5", "-I", src, dst, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"ping {src} -> {dst} failed:\n{proc.stdout}\n"
            + "\n".join(diagnostics(n) for n in (ns, peer) if n is not None)
        )


def diagnostics(ns: Netns) -> str:
    """What to look at when traffic does not pass: SAs, policies, error counters."""
    parts = [f"=== {ns.name}"]
    for args in (("-s", "xfrm", "state"), ("xfrm", "policy"), ("route",), ("-6", "route")):
        parts.append(ns.ip(*args, check=False).stdout)
    stat = ns.run("cat", "/proc/net/xfrm_stat", check=False).stdout
    parts.append("\n".join(line for line in stat.splitlines() if not line.endswith(" 0")))
    return "\n".join(parts)


def tcp_roundtrip(a: Netns, b: Netns, src: str, dst: str, size: int = 200_000) -> int:
    """Send `size` random bytes from a to b over TCP; return how many arrived intact."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with in_netns(b.name):
        server = socket.socket(family, socket.SOCK_STREAM)
    with in_netns(a.name):
        client = socket.socket(family, socket.SOCK_STREAM)
    payload = os.urandom(size)
    received = bytearray()
    try:
        server.bind((dst, 0))
        server.listen(1)
        server.settimeout(60)
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            conn.settimeout(60)
            with conn:
                while chunk := conn.recv(65536):
                    received.extend(chunk)

        t = threading.Thread(target=serve)
        t.start()
        client.settimeout(60)
        client.bind((src, 0))
        client.connect((dst, port))
        client.sendall(payload)
        client.close()
        t.join(90)
    finally:
        server.close()
        client.close()
    return len(received) if bytes(received) == payload else -1


def ip_xfrm_blocks(ns: Netns, what: str) -> list[str]:
    """`ip xfrm state|policy` output, one text block per object."""
    out = ns.ip("xfrm", what, "list").stdout
    blocks = [b for b in re.split(r"\n(?=src )", out.strip()) if b.strip()]
    # Per-socket policies (the IKE sockets' bypass) are listed too; they are not SPD entries.
    return [b for b in blocks if "\tsocket " not in b]
