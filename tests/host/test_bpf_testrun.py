"""Every parse path of the data-plane programs through BPF_PROG_TEST_RUN.

The programs run in the host kernel on crafted frames (bpf/packets.py); each test
asserts the verdict, the one reason counter the packet must end in, and the per-slot
counters. Clamped SYNs are checked with scapy's own checksum computation.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf import abi
from bpf import packets as pk
from bpf.abi import Reason, TcAction, XdpAction
from bpf.loader import AttachedPrograms, BpfError, IkeShield, Programs, SlotCounters
from bpf.spi import make_inbound_spi
from bpf.testrun import TestRunError, prog_test_run

PASS, DROP, REDIRECT = XdpAction.PASS, XdpAction.DROP, XdpAction.REDIRECT
SLOT = 5
SPI = (0x1234 << 16) | SLOT  # slot in the low 16 bits (bpf/spi.py layout)


@pytest.fixture(scope="module")
def programs() -> Iterator[Programs]:
    progs = Programs()
    try:
        yield progs
    finally:
        progs.close()


HASH_SEED = 0x5EED  # per-source IKE buckets: none of this file's sources share one


def make_dp(programs: Programs, **kwargs: object) -> AttachedPrograms:
    programs.reset_verdicts()
    programs.reset_ike_buckets()
    kwargs.setdefault("hash_seed", HASH_SEED)
    dp = AttachedPrograms(None, None, programs=programs, **kwargs)  # type: ignore[arg-type]
    dp.open()
    return dp


@pytest.fixture
def dp(programs: Programs) -> Iterator[AttachedPrograms]:
    d = make_dp(programs)
    try:
        yield d
    finally:
        d.clear()
        d.close()


def verdicts(programs: Programs) -> Counter[tuple[Reason, XdpAction]]:
    return Counter({(v.reason, v.action): v.packets for v in programs.verdict_counts()})


def xdp(programs: Programs, frame: bytes, reason: Reason, action: XdpAction) -> None:
    """Run xdp_wan once and check its verdict and that exactly `reason` was counted."""
    programs.reset_verdicts()
    res = prog_test_run(programs.fds["xdp_wan"], frame)
    assert res.retval == action
    assert verdicts(programs) == Counter({(reason, action): 1})


def tc(programs: Programs, prog: str, frame: bytes, reason: Reason, action: XdpAction) -> bytes:
    programs.reset_verdicts()
    res = prog_test_run(programs.fds[prog], frame)
    assert res.retval == (TcAction.SHOT if action == DROP else TcAction.OK)
    assert verdicts(programs) == Counter({(reason, action): 1})
    return res.data


# --------------------------------------------------------------------------- WAN: L2/L3


def test_non_ip_passes(programs: Programs, dp: AttachedPrograms) -> None:
    from scapy.layers.l2 import ARP

    arp = bytes(pk.ETH.copy() / ARP(psrc="192.0.2.1", pdst="192.0.2.2"))
    xdp(programs, arp, Reason.WAN_NON_IP, PASS)


def test_truncated_vlan_tag_is_dropped(programs: Programs, dp: AttachedPrograms) -> None:
    frame = pk.esp4(SPI)
    xdp(programs, frame[:12] + b"\x81\x00" + b"\x00", Reason.WAN_MALFORMED_L2, DROP)


def test_three_vlan_tags_are_not_parsed(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    xdp(programs, pk.frame(pk.ip4(b"", proto=50), vlans=3), Reason.WAN_OTHER, PASS)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda f: f[: 14 + 10], id="truncated-header"),
        pytest.param(lambda f: f[:14] + bytes([0x44]) + f[15:], id="ihl-4"),
        pytest.param(lambda f: f[:14] + bytes([0x65]) + f[15:], id="version-6"),
        pytest.param(lambda f: f[:16] + struct.pack("!H", 2000) + f[18:], id="tot-len-too-big"),
        pytest.param(lambda f: f[:16] + struct.pack("!H", 12) + f[18:], id="tot-len-below-ihl"),
    ],
)
def test_malformed_ipv4_is_dropped(programs: Programs, dp: AttachedPrograms, mangle) -> None:  # type: ignore[no-untyped-def]
    dp.add_inbound_spi(SLOT, SPI)
    xdp(programs, mangle(pk.esp4(SPI)), Reason.WAN_MALFORMED_IP, DROP)
    assert dp.slot_counters(SLOT) == SlotCounters()


def test_truncated_ipv6_header_is_dropped(programs: Programs, dp: AttachedPrograms) -> None:
    xdp(programs, pk.esp6(SPI)[: 14 + 30], Reason.WAN_MALFORMED_IP, DROP)


def test_ipv4_non_first_fragment_passes_uncounted(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    frame = pk.frame(pk.ip4(pk.esp_payload(SPI), proto=50, frag=100))
    xdp(programs, frame, Reason.WAN_FRAGMENT, PASS)
    assert dp.slot_counters(SLOT).esp_in_packets == 0


def test_ipv4_first_fragment_esp_is_counted(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    frame = pk.frame(pk.ip4(pk.esp_payload(SPI), proto=50, flags="MF"))
    xdp(programs, frame, Reason.WAN_ESP, PASS)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(pk.syn(), id="tcp"),
        pytest.param(pk.frame(pk.ip4(pk.UDP(sport=53, dport=53) / b"dns")), id="udp-53"),
        pytest.param(pk.frame(pk.ip4(pk.esp_payload(SPI), proto=51)), id="ah"),
        pytest.param(pk.frame(pk.ip6(pk.UDP(dport=4501) / b"x")), id="udp6-4501"),
    ],
)
def test_other_traffic_passes(programs: Programs, dp: AttachedPrograms, frame: bytes) -> None:
    xdp(programs, frame, Reason.WAN_OTHER, PASS)


# --------------------------------------------------------------------------- WAN: ESP


def test_esp_known_spi_is_counted_in_its_slot(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    frame = pk.esp4(SPI, size=1400)
    xdp(programs, frame, Reason.WAN_ESP, PASS)
    ip_len = len(frame) - 14
    assert dp.slot_counters(SLOT) == SlotCounters(esp_in_packets=1, esp_in_bytes=ip_len)


@pytest.mark.parametrize("vlans", [0, 1, 2])
def test_esp_behind_vlan_tags(programs: Programs, dp: AttachedPrograms, vlans: int) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    frame = pk.frame(pk.ip4(pk.esp_payload(SPI), proto=50), vlans=vlans)
    xdp(programs, frame, Reason.WAN_ESP, PASS)
    assert dp.slot_counters(SLOT).esp_in_bytes == len(frame) - 14 - 4 * vlans


def test_esp_after_ipv4_options(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    # 12 bytes of options: ihl = 8 (NOP padding around a Router Alert, RFC 2113).
    opts = b"\x94\x04\x00\x00" + b"\x01" * 8
    frame = pk.frame(pk.ip4(pk.esp_payload(SPI), proto=50, options=[pk.Raw(opts)]))
    assert frame[14] == 0x48
    xdp(programs, frame, Reason.WAN_ESP, PASS)
    assert dp.slot_counters(SLOT).esp_in_bytes == len(frame) - 14


def test_esp_over_ipv6_with_extension_headers(programs: Programs, dp: AttachedPrograms) -> None:
    from scapy.layers.inet6 import (
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )

    dp.add_inbound_spi(SLOT, SPI)
    plain = pk.esp6(SPI)
    xdp(programs, plain, Reason.WAN_ESP, PASS)
    chain = (
        IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(offset=0, m=1, nh=50)
        / pk.Raw(pk.esp_payload(SPI))
    )
    xdp(programs, pk.frame(pk.ip6(chain)), Reason.WAN_ESP, PASS)
    later = IPv6ExtHdrFragment(offset=10, nh=50) / pk.Raw(pk.esp_payload(SPI))
    xdp(programs, pk.frame(pk.ip6(later)), Reason.WAN_FRAGMENT, PASS)
    assert dp.slot_counters(SLOT).esp_in_packets == 2


def test_ipv6_extension_header_chains(programs: Programs, dp: AttachedPrograms) -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    dp.add_inbound_spi(SLOT, SPI)
    deep = IPv6ExtHdrDestOpt()
    for _ in range(6):
        deep = deep / IPv6ExtHdrDestOpt()
    xdp(programs, pk.frame(pk.ip6(deep / pk.Raw(pk.esp_payload(SPI)))), Reason.WAN_OTHER, PASS)
    # A destination-options header claiming 64 bytes where the packet has 8.
    cut = pk.frame(pk.ip6(pk.Raw(b"\x32\x07" + bytes(6)), nh=60))
    xdp(programs, cut, Reason.WAN_MALFORMED_IP, DROP)


def test_truncated_esp_header_is_dropped(programs: Programs, dp: AttachedPrograms) -> None:
    frame = pk.frame(pk.ip4(pk.Raw(struct.pack("!I", SPI)), proto=50))
    xdp(programs, frame, Reason.WAN_ESP_MALFORMED, DROP)


def test_unknown_spi_passes_or_drops_as_configured(
    programs: Programs, dp: AttachedPrograms
) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    other_high = (0x4321 << 16) | SLOT  # right slot, wrong SPI
    xdp(programs, pk.esp4(other_high), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    dp.update_settings(drop_unknown_spi=True)
    xdp(programs, pk.esp4(other_high), Reason.WAN_ESP_UNKNOWN_SPI, DROP)
    xdp(programs, pk.esp4(0x00FF0006), Reason.WAN_ESP_UNKNOWN_SPI, DROP)
    xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, PASS)
    assert dp.slot_counters(SLOT).esp_in_packets == 1


def test_rekey_keeps_both_spis_in_one_slot(programs: Programs, dp: AttachedPrograms) -> None:
    old = make_inbound_spi(SLOT)
    new = make_inbound_spi(SLOT, avoid=[old])
    dp.add_inbound_spi(SLOT, old)
    dp.add_inbound_spi(SLOT, new)
    xdp(programs, pk.esp4(old), Reason.WAN_ESP, PASS)
    xdp(programs, pk.esp4(new), Reason.WAN_ESP, PASS)
    dp.remove_inbound_spi(old)
    xdp(programs, pk.esp4(old), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    assert dp.slot_counters(SLOT).esp_in_packets == 2
    with pytest.raises(BpfError):
        dp.remove_inbound_spi(old)


def test_foreign_spi_uses_the_fallback_map(programs: Programs, dp: AttachedPrograms) -> None:
    foreign = 0xC0FFEE01  # low bits name slot 0xEE01, not ours: goes to the hash map
    assert not programs.get_config().flags & abi.CFG_IN_FALLBACK  # hash skipped while empty
    dp.add_inbound_spi(SLOT, foreign)
    assert programs.get_config().flags & abi.CFG_IN_FALLBACK
    xdp(programs, pk.esp4(foreign), Reason.WAN_ESP, PASS)
    xdp(programs, pk.esp4(foreign + 1), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    assert dp.slot_counters(SLOT).esp_in_packets == 1
    assert dp.slot_counters(0xEE01).esp_in_packets == 0
    dp.remove_inbound_spi(foreign)
    assert not programs.get_config().flags & abi.CFG_IN_FALLBACK
    xdp(programs, pk.esp4(foreign), Reason.WAN_ESP_UNKNOWN_SPI, PASS)


def test_bad_spi_and_slot_arguments_are_refused(dp: AttachedPrograms) -> None:
    with pytest.raises(BpfError, match="reserved"):
        dp.add_inbound_spi(SLOT, 200)
    with pytest.raises(BpfError, match="slot"):
        dp.add_inbound_spi(1 << 16, SPI)
    with pytest.raises(BpfError, match="not registered"):
        dp.remove_outbound_spi(SPI)


# --------------------------------------------------------------------------- WAN: UDP 4500/500


def test_esp_in_udp(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    frame = pk.natt4(SPI, sport=31337)
    xdp(programs, frame, Reason.WAN_ESP, PASS)
    assert dp.slot_counters(SLOT) == SlotCounters(esp_in_packets=1, esp_in_bytes=len(frame) - 14)
    xdp(programs, pk.natt4(SPI + (1 << 16)), Reason.WAN_ESP_UNKNOWN_SPI, PASS)


def test_natt_keepalive_and_short_payloads(programs: Programs, dp: AttachedPrograms) -> None:
    udp = pk.UDP(sport=4500, dport=4500)
    xdp(programs, pk.frame(pk.ip4(udp / b"\xff")), Reason.WAN_NATT_KEEPALIVE, PASS)
    xdp(programs, pk.frame(pk.ip4(udp / b"\x00")), Reason.WAN_ESP_MALFORMED, DROP)
    xdp(programs, pk.frame(pk.ip4(udp / b"\x01\x02\x03")), Reason.WAN_ESP_MALFORMED, DROP)
    xdp(programs, pk.frame(pk.ip4(udp / b"\x01\x02\x03\x04\x05")), Reason.WAN_ESP_MALFORMED, DROP)


def test_malformed_udp_header(programs: Programs, dp: AttachedPrograms) -> None:
    frame = pk.natt4(SPI)
    # UDP length field larger than the IP payload.
    bad_len = frame[: 14 + 20 + 4] + struct.pack("!H", 1000) + frame[14 + 20 + 6 :]
    xdp(programs, bad_len, Reason.WAN_MALFORMED_IP, DROP)
    short = frame[: 14 + 20 + 4] + struct.pack("!H", 4) + frame[14 + 20 + 6 :]
    xdp(programs, short, Reason.WAN_MALFORMED_IP, DROP)
    # IP says 24 bytes: the UDP header is cut.
    cut = pk.frame(pk.ip4(pk.Raw(b"\x11\x94\x11\x94"), proto=17))
    xdp(programs, cut, Reason.WAN_MALFORMED_IP, DROP)


def test_ike_on_500_and_behind_the_non_esp_marker(programs: Programs, dp: AttachedPrograms) -> None:
    init = pk.ike_header(pk.IKE_SA_INIT, body=b"\x00" * 40)
    xdp(programs, pk.ike4(init), Reason.WAN_IKE, PASS)
    xdp(programs, pk.ike4(init, port=4500), Reason.WAN_IKE, PASS)
    xdp(programs, pk.ike6(init), Reason.WAN_IKE, PASS)
    xdp(programs, pk.ike4(init[:20]), Reason.WAN_IKE_MALFORMED, DROP)
    xdp(programs, pk.ike4(init[:20], port=4500), Reason.WAN_IKE_MALFORMED, DROP)


def test_ike_sa_init_token_bucket(programs: Programs) -> None:
    dp = make_dp(programs, ike_shield=IkeShield(rate=0.5, burst=3))
    try:
        init = pk.ike_header(pk.IKE_SA_INIT)
        for _ in range(3):
            xdp(programs, pk.ike4(init, src="192.0.2.9"), Reason.WAN_IKE, PASS)
        xdp(programs, pk.ike4(init, src="192.0.2.9"), Reason.WAN_IKE_RATE_LIMITED, DROP)
        xdp(programs, pk.ike4(init, src="192.0.2.9", port=4500), Reason.WAN_IKE_RATE_LIMITED, DROP)
        # Other sources, responses and other exchanges are not limited.
        xdp(programs, pk.ike4(init, src="192.0.2.10"), Reason.WAN_IKE, PASS)
        response = pk.ike_header(pk.IKE_SA_INIT, flags=pk.IKE_FLAG_RESPONSE)
        xdp(programs, pk.ike4(response, src="192.0.2.9"), Reason.WAN_IKE, PASS)
        auth = pk.ike_header(pk.IKE_AUTH, spi_r=b"\x22" * 8)
        xdp(programs, pk.ike4(auth, src="192.0.2.9"), Reason.WAN_IKE, PASS)
        # IPv6 sources share a bucket per /64.
        for host in range(1, 4):
            xdp(programs, pk.ike6(init, src=f"2001:db8:7::{host}"), Reason.WAN_IKE, PASS)
        xdp(programs, pk.ike6(init, src="2001:db8:7::99"), Reason.WAN_IKE_RATE_LIMITED, DROP)
        xdp(programs, pk.ike6(init, src="2001:db8:8::1"), Reason.WAN_IKE, PASS)
        # A burst in one BPF_PROG_TEST_RUN call: all over budget are dropped and counted.
        programs.reset_verdicts()
        prog_test_run(programs.fds["xdp_wan"], pk.ike4(init, src="192.0.2.11"), repeat=50)
        assert verdicts(programs) == Counter(
            {(Reason.WAN_IKE, PASS): 3, (Reason.WAN_IKE_RATE_LIMITED, DROP): 47}
        )
        dp.update_settings(ike_shield=None)
        xdp(programs, pk.ike4(init, src="192.0.2.9"), Reason.WAN_IKE, PASS)
    finally:
        dp.clear()
        dp.close()


# --------------------------------------------------------------------------- WAN: steering


@pytest.fixture
def on_cpu0() -> Iterator[None]:
    """Run the test on CPU 0 (the steering tests steer to CPU 1: another CPU)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_steering_redirects_known_esp_but_never_offloaded(
    programs: Programs, on_cpu0: None
) -> None:
    dp = make_dp(programs, steer_cpus=[1])
    try:
        dp.add_inbound_spi(SLOT, SPI)
        xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, REDIRECT)
        xdp(programs, pk.esp4(SPI + (1 << 16)), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
        dp.set_slot_offloaded(SLOT, True)
        xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, PASS)
        dp.set_slot_offloaded(SLOT, False)
        xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, REDIRECT)
        # a slot whose CPU is the one the packet arrived on: no hop, the stack takes it here
        dp.update_settings(steer_cpus=[0, 1])
        dp.set_slot_cpu(SLOT, 0)
        xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, PASS)
        assert dp.slot_counters(SLOT).esp_in_packets == 4
    finally:
        dp.clear()
        dp.close()
    nic = make_dp(programs, steer_cpus=[1], nic_decrypts=True)
    try:
        nic.add_inbound_spi(SLOT, SPI)
        xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, PASS)
    finally:
        nic.clear()
        nic.close()


def test_steering_is_off_by_default(programs: Programs, dp: AttachedPrograms) -> None:
    dp.add_inbound_spi(SLOT, SPI)
    xdp(programs, pk.esp4(SPI), Reason.WAN_ESP, PASS)


# --------------------------------------------------------------------------- WAN egress (TC)


def test_outbound_esp_counted_per_slot(programs: Programs, dp: AttachedPrograms) -> None:
    out_spi = 0xA1B2C3D4  # chosen by the peer: any value
    dp.add_outbound_spi(SLOT, out_spi)
    frame = pk.esp4(out_spi, size=500)
    tc(programs, "tc_wan_egress", frame, Reason.OUT_ESP, PASS)
    natt = pk.natt4(out_spi, sport=4500, dport=61000)
    tc(programs, "tc_wan_egress", natt, Reason.OUT_ESP, PASS)
    tc(programs, "tc_wan_egress", pk.esp6(out_spi), Reason.OUT_ESP, PASS)
    assert dp.slot_counters(SLOT) == SlotCounters(
        esp_out_packets=3,
        esp_out_bytes=len(frame) - 14 + len(natt) - 14 + len(pk.esp6(out_spi)) - 14,
    )
    tc(programs, "tc_wan_egress", pk.esp4(0x0BAD0001), Reason.OUT_ESP_UNKNOWN_SPI, PASS)
    ike = pk.ike4(pk.ike_header(), port=4500)
    tc(programs, "tc_wan_egress", ike, Reason.OUT_OTHER, PASS)
    tc(programs, "tc_wan_egress", pk.syn(), Reason.OUT_OTHER, PASS)
    tc(programs, "tc_wan_egress", pk.esp4(out_spi)[:40], Reason.OUT_OTHER, PASS)
    dp.remove_outbound_spi(out_spi)
    tc(programs, "tc_wan_egress", frame, Reason.OUT_ESP_UNKNOWN_SPI, PASS)


# --------------------------------------------------------------------------- LAN ingress (TC)

LAN = "tc_lan_ingress"


@pytest.fixture
def lan(dp: AttachedPrograms) -> AttachedPrograms:
    dp.set_clamp_prefix("203.0.113.0/24", SLOT, 1400)  # IPv4 MSS 1360
    dp.set_clamp_prefix("2001:db8:2::/48", SLOT, 1400)  # IPv6 MSS 1340
    return dp


def clamp(
    programs: Programs, frame: bytes, expect_mss: int | None, reason: Reason, prog: str = LAN
) -> bytes:
    out = tc(programs, prog, frame, reason, PASS)
    assert len(out) == len(frame)
    assert pk.tcp_mss(out) == expect_mss
    assert pk.tcp_checksum_ok(out)
    if reason not in (Reason.LAN_MSS_CLAMPED, Reason.LAN_OUT_MSS_CLAMPED):
        assert out == frame
    return out


def test_syn_and_syn_ack_clamped_ipv4(programs: Programs, lan: AttachedPrograms) -> None:
    frame = pk.syn(mss=1460)
    assert pk.tcp_checksum_ok(frame)
    out = clamp(programs, frame, 1360, Reason.LAN_MSS_CLAMPED)
    # Only the two MSS bytes and the two checksum bytes changed.
    diff = [i for i in range(len(frame)) if frame[i] != out[i]]
    assert set(diff) <= {14 + 20 + 16, 14 + 20 + 17, 14 + 20 + 22, 14 + 20 + 23}
    assert not pk.tcp_checksum_ok(out[:-1] + bytes([out[-1] ^ 1]))  # the check can fail
    clamp(programs, pk.syn(mss=1460, flags="SA"), 1360, Reason.LAN_MSS_CLAMPED)
    clamp(programs, pk.syn(mss=65535), 1360, Reason.LAN_MSS_CLAMPED)


def test_syn_clamped_ipv6_and_behind_headers(programs: Programs, lan: AttachedPrograms) -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    clamp(programs, pk.syn(mss=1440, v6=True), 1340, Reason.LAN_MSS_CLAMPED)
    clamp(programs, pk.syn(mss=1440, v6=True, flags="SA"), 1340, Reason.LAN_MSS_CLAMPED)
    tcp = pk.TCP(sport=1, dport=2, flags="S", options=[("MSS", 1440)])
    clamp(programs, pk.frame(pk.ip6(IPv6ExtHdrDestOpt() / tcp)), 1340, Reason.LAN_MSS_CLAMPED)
    clamp(programs, pk.syn(mss=1460, vlans=1), 1360, Reason.LAN_MSS_CLAMPED)
    clamp(programs, pk.syn(mss=1460, vlans=2), 1360, Reason.LAN_MSS_CLAMPED)
    ip_opts = [pk.Raw(b"\x94\x04\x00\x00")]  # Router Alert (RFC 2113): ihl = 6
    tcp4 = pk.TCP(flags="S", options=[("MSS", 1460)])
    clamp(programs, pk.frame(pk.ip4(tcp4, options=ip_opts)), 1360, Reason.LAN_MSS_CLAMPED)


def test_mss_never_raised_and_missing_mss_left_alone(
    programs: Programs, lan: AttachedPrograms
) -> None:
    clamp(programs, pk.syn(mss=1360), 1360, Reason.LAN_MSS_UNCHANGED)
    clamp(programs, pk.syn(mss=536), 536, Reason.LAN_MSS_UNCHANGED)
    clamp(programs, pk.syn(mss=None), None, Reason.LAN_MSS_UNCHANGED)
    ts_only = [("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    clamp(programs, pk.syn(options=ts_only), None, Reason.LAN_MSS_UNCHANGED)
    after_eol = pk.syn(options=[("EOL", None), ("MSS", 1460)])  # options end at EOL
    clamp(programs, after_eol, None, Reason.LAN_MSS_UNCHANGED)


def test_mss_found_anywhere_in_the_options(programs: Programs, lan: AttachedPrograms) -> None:
    linux_like = [
        ("MSS", 1460),
        ("SAckOK", b""),
        ("Timestamp", (1, 0)),
        ("NOP", None),
        ("WScale", 7),
    ]
    clamp(programs, pk.syn(options=linux_like), 1360, Reason.LAN_MSS_CLAMPED)
    late = [
        ("NOP", None),
        ("NOP", None),
        ("Timestamp", (1, 0)),
        ("WScale", 7),
        ("NOP", None),
        ("MSS", 1460),
    ]
    clamp(programs, pk.syn(options=late), 1360, Reason.LAN_MSS_CLAMPED)
    last = [("NOP", None)] * 36 + [("MSS", 1460)]  # 40 bytes: the MSS is the last option
    clamp(programs, pk.syn(options=last), 1360, Reason.LAN_MSS_CLAMPED)


def raw_options(options: bytes) -> bytes:
    """A SYN whose option bytes are exactly `options` (any junk), lengths and checksum right."""
    assert len(options) % 4 == 0
    tcp = pk.TCP(flags="S", dataofs=5 + len(options) // 4) / pk.Raw(options)
    return pk.frame(pk.ip4(tcp))


def test_odd_offset_and_malformed_options_left_alone(
    programs: Programs, lan: AttachedPrograms
) -> None:
    odd = pk.syn(options=[("NOP", None), ("MSS", 1460)])
    clamp(programs, odd, 1460, Reason.LAN_MSS_ODD_OFFSET)
    for options in (
        b"\x02\x03\x05\xb4",  # MSS with length 3
        b"\x08\x00\x02\x04\x05\xb4\x00\x00",  # option length 0
        b"\x03\x09\x07\x00",  # length beyond the option space
        b"\x01\x01\x02\x04",  # MSS cut by the end of the option space
        b"\x01\x01\x01\x02",  # kind without a length octet
    ):
        frame = raw_options(options)
        assert tc(programs, LAN, frame, Reason.LAN_MSS_MALFORMED, PASS) == frame


def test_lan_counts_per_slot_and_longest_prefix(programs: Programs, lan: AttachedPrograms) -> None:
    lan.set_clamp_prefix("203.0.113.128/25", 9, 1300)
    udp = pk.frame(pk.ip4(pk.UDP(sport=1, dport=2) / b"hello", dst="203.0.113.5"))
    tc(programs, LAN, udp, Reason.LAN_TUNNEL, PASS)
    clamp(programs, pk.syn(dst="203.0.113.200"), 1260, Reason.LAN_MSS_CLAMPED)
    tc(programs, LAN, pk.syn(dst="192.0.2.1"), Reason.LAN_NO_TUNNEL, PASS)
    ack = pk.frame(pk.ip4(pk.TCP(flags="A")))
    tc(programs, LAN, ack, Reason.LAN_TUNNEL, PASS)
    assert lan.slot_counters(SLOT) == SlotCounters(
        clear_to_tunnel_packets=2, clear_to_tunnel_bytes=len(udp) - 14 + len(ack) - 14
    )
    assert lan.slot_counters(9).clear_to_tunnel_packets == 1
    lan.remove_clamp_prefix("203.0.113.128/25")
    clamp(programs, pk.syn(dst="203.0.113.200"), 1360, Reason.LAN_MSS_CLAMPED)


def test_lan_egress_clamps_what_comes_out_of_the_tunnel(
    programs: Programs, lan: AttachedPrograms
) -> None:
    """Traffic from a tunnel prefix to the LAN: looked up by source, counted separately."""
    out = "tc_lan_egress"
    syn_ack = pk.syn(flags="SA", src="203.0.113.9", dst="10.0.0.2")
    clamp(programs, syn_ack, 1360, Reason.LAN_OUT_MSS_CLAMPED, prog=out)
    syn6 = pk.syn(v6=True, src="2001:db8:2::9", dst="2001:db8:99::2")
    clamp(programs, syn6, 1340, Reason.LAN_OUT_MSS_CLAMPED, prog=out)
    clamp(programs, pk.syn(mss=1000, src="203.0.113.9"), 1000, Reason.LAN_OUT_MSS_UNCHANGED, out)
    odd = pk.syn(options=[("NOP", None), ("MSS", 1460)], src="203.0.113.9")
    clamp(programs, odd, 1460, Reason.LAN_OUT_MSS_ODD_OFFSET, prog=out)
    # The same SYN-ACK seen on LAN ingress: its destination is in no tunnel prefix.
    tc(programs, LAN, syn_ack, Reason.LAN_NO_TUNNEL, PASS)
    tc(programs, out, pk.syn(src="192.0.2.1"), Reason.LAN_OUT_NO_TUNNEL, PASS)
    data = pk.frame(pk.ip4(pk.TCP(flags="A") / bytes(500), src="203.0.113.9", dst="10.0.0.2"))
    tc(programs, out, data, Reason.LAN_OUT_TUNNEL, PASS)
    tc(programs, out, data[: 14 + 20 + 10], Reason.LAN_OUT_MALFORMED, DROP)
    c = lan.slot_counters(SLOT)
    assert (c.clear_from_tunnel_packets, c.clear_to_tunnel_packets) == (5, 0)
    assert c.clear_from_tunnel_bytes == sum(
        len(f) - 14 for f in (syn_ack, syn6, pk.syn(mss=1000, src="203.0.113.9"), odd, data)
    )
    assert lan.mss_clamped() == {}  # no LAN interface attached in this fixture


def test_lan_malformed_and_non_ip(programs: Programs, lan: AttachedPrograms) -> None:
    frame = pk.syn()
    tc(programs, LAN, frame[: 14 + 20 + 10], Reason.LAN_MALFORMED, DROP)  # IP length too big
    # Truncated TCP header that the IP header agrees with.
    cut = pk.frame(pk.ip4(pk.Raw(bytes(10)), proto=6))
    tc(programs, LAN, cut, Reason.LAN_MALFORMED, DROP)
    bad_doff = bytearray(frame)
    bad_doff[14 + 20 + 12] = 0x20  # data offset 2 words
    tc(programs, LAN, bytes(bad_doff), Reason.LAN_MALFORMED, DROP)
    long_doff = bytearray(frame)
    long_doff[14 + 20 + 12] = 0xF0  # 60-byte header in a 24-byte segment
    tc(programs, LAN, bytes(long_doff), Reason.LAN_MALFORMED, DROP)
    arp = frame[:12] + b"\x08\x06" + frame[14:]
    tc(programs, LAN, arp, Reason.LAN_NO_TUNNEL, PASS)


def test_clamp_switched_off(programs: Programs) -> None:
    dp = make_dp(programs, mss_clamp=False)
    try:
        dp.set_clamp_prefix("203.0.113.0/24", SLOT, 1400)
        frame = pk.syn(mss=1460)
        assert tc(programs, LAN, frame, Reason.LAN_TUNNEL, PASS) == frame
        assert dp.slot_counters(SLOT).clear_to_tunnel_packets == 1
    finally:
        dp.clear()
        dp.close()


def test_fixed_mss_cap_applies_below_the_mtu(programs: Programs) -> None:
    dp = make_dp(programs, mss_clamp=1200)
    try:
        dp.set_clamp_prefix("203.0.113.0/24", SLOT, 1400)
        dp.set_clamp_prefix("2001:db8:2::/48", SLOT, 1400)
        clamp(programs, pk.syn(mss=1460), 1200, Reason.LAN_MSS_CLAMPED)
        clamp(programs, pk.syn(mss=1460, v6=True), 1200, Reason.LAN_MSS_CLAMPED)
    finally:
        dp.clear()
        dp.close()


def test_prefix_arguments_are_checked(lan: AttachedPrograms) -> None:
    with pytest.raises(BpfError, match="bad prefix"):
        lan.set_clamp_prefix("203.0.113.0/33", SLOT, 1400)
    with pytest.raises(BpfError, match="out of range 1280"):
        lan.set_clamp_prefix("2001:db8::/32", SLOT, 1200)
    with pytest.raises(BpfError, match="not set"):
        lan.remove_clamp_prefix("10.0.0.0/8")


# --------------------------------------------------------------------------- invariants


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.sampled_from(
        [
            pk.esp4(SPI),
            pk.esp6(SPI),
            pk.natt4(SPI),
            pk.ike4(pk.ike_header()),
            pk.syn(),
            pk.syn(v6=True),
            pk.syn(vlans=2),
        ]
    ),
    cut=st.integers(min_value=15, max_value=200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
)
def test_every_packet_ends_in_exactly_one_reason(
    programs: Programs, lan: AttachedPrograms, base: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Fuzz: truncated and bit-flipped frames get a verdict, counted exactly once."""
    lan.add_inbound_spi(SLOT, SPI)
    data = bytearray(base[:cut])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    for prog in ("xdp_wan", "tc_wan_egress", "tc_lan_ingress", "tc_lan_egress"):
        programs.reset_verdicts()
        try:
            res = prog_test_run(programs.fds[prog], bytes(data))
        except TestRunError as e:
            # The kernel's skb test harness wants a whole IP header for IP ethertypes
            # (net/bpf/test_run.c); that refusal is about the harness, not our program.
            assert prog != "xdp_wan" and e.errno == errno.EINVAL and len(data) < 14 + 8 + 40
            continue
        counted = verdicts(programs)
        assert sum(counted.values()) == 1
        ((reason, action),) = counted
        if prog == "xdp_wan":
            assert res.retval == action and action in (PASS, DROP)
        else:
            assert res.retval == (TcAction.SHOT if action == DROP else TcAction.OK)


# --------------------------------------------------------------------------- Child SA API


def test_child_sa_install_rekey_and_delete(programs: Programs, dp: AttachedPrograms) -> None:
    old_in = make_inbound_spi(SLOT)
    dp.install_child_sa(
        SLOT, spi_in=old_in, spi_out=0x11110001, remote_ts=["203.0.113.0/24"], mtu=1400
    )
    xdp(programs, pk.esp4(old_in), Reason.WAN_ESP, PASS)
    tc(programs, "tc_wan_egress", pk.esp4(0x11110001), Reason.OUT_ESP, PASS)
    clamp(programs, pk.syn(mss=1460), 1360, Reason.LAN_MSS_CLAMPED)
    # Rekey: new SPIs in the same slot, then the old ones go; counters carry on.
    new_in = make_inbound_spi(SLOT, avoid=[old_in])
    dp.install_child_sa(
        SLOT, spi_in=new_in, spi_out=0x22220002, remote_ts=["203.0.113.0/24"], mtu=1400
    )
    dp.remove_child_sa_spis(spi_in=old_in, spi_out=0x11110001)
    xdp(programs, pk.esp4(old_in), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    xdp(programs, pk.esp4(new_in), Reason.WAN_ESP, PASS)
    tc(programs, "tc_wan_egress", pk.esp4(0x11110001), Reason.OUT_ESP_UNKNOWN_SPI, PASS)
    tc(programs, "tc_wan_egress", pk.esp4(0x22220002), Reason.OUT_ESP, PASS)
    c = dp.slot_counters(SLOT)
    assert (c.esp_in_packets, c.esp_out_packets, c.clear_to_tunnel_packets) == (2, 2, 1)
    dp.remove_child_sa(SLOT, spi_in=new_in, spi_out=0x22220002, remote_ts=["203.0.113.0/24"])
    xdp(programs, pk.esp4(new_in), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    tc(programs, LAN, pk.syn(mss=1460), Reason.LAN_NO_TUNNEL, PASS)
    assert dp.slot_counters(SLOT) == SlotCounters()


def test_child_sa_install_is_all_or_nothing(programs: Programs, dp: AttachedPrograms) -> None:
    spi_in = make_inbound_spi(SLOT)
    with pytest.raises(BpfError, match="bad prefix"):
        dp.install_child_sa(
            SLOT,
            spi_in=spi_in,
            spi_out=0x33330003,
            remote_ts=["203.0.113.0/24", "not-a-prefix"],
            mtu=1400,
        )
    xdp(programs, pk.esp4(spi_in), Reason.WAN_ESP_UNKNOWN_SPI, PASS)
    tc(programs, "tc_wan_egress", pk.esp4(0x33330003), Reason.OUT_ESP_UNKNOWN_SPI, PASS)
    tc(programs, LAN, pk.syn(), Reason.LAN_NO_TUNNEL, PASS)


def test_first_fragment_of_a_large_ike_message_passes(
    programs: Programs, dp: AttachedPrograms
) -> None:
    """IKE_AUTH with certificates is often fragmented: the first fragment carries the
    whole datagram's UDP length, which must not count as malformed."""
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment

    big = pk.ike_header(pk.IKE_AUTH, spi_r=b"\x22" * 8, body=bytes(3000))
    frags = fragment(pk.ip4(pk.UDP(sport=500, dport=500) / big), fragsize=1400)
    xdp(programs, pk.frame(frags[0]), Reason.WAN_IKE, PASS)
    xdp(programs, pk.frame(frags[1]), Reason.WAN_FRAGMENT, PASS)
    natt = fragment(pk.ip4(pk.UDP(sport=4500, dport=4500) / (bytes(4) + big)), fragsize=1400)
    xdp(programs, pk.frame(natt[0]), Reason.WAN_IKE, PASS)
    udp6 = bytes(pk.UDP(sport=500, dport=500, len=8 + len(big)) / big[:1200])
    first6 = pk.ip6(IPv6ExtHdrFragment(offset=0, m=1, nh=17) / pk.Raw(udp6))
    xdp(programs, pk.frame(first6), Reason.WAN_IKE, PASS)
    # Not a fragment: the same UDP length is a lie.
    whole6 = pk.ip6(pk.Raw(udp6), nh=17)
    xdp(programs, pk.frame(whole6), Reason.WAN_MALFORMED_IP, DROP)


def test_excluded_prefix_is_carved_out_of_a_wider_tunnel(
    programs: Programs, dp: AttachedPrograms
) -> None:
    """A 0.0.0.0/0 selector must not swallow the gateway's own LAN (XFRM bypass style)."""
    dp.set_clamp_prefix("0.0.0.0/0", SLOT, 1400)
    dp.exclude_prefix("10.0.0.0/24")
    clamp(programs, pk.syn(dst="192.0.2.77"), 1360, Reason.LAN_MSS_CLAMPED)
    tc(programs, LAN, pk.syn(dst="10.0.0.1"), Reason.LAN_NO_TUNNEL, PASS)
    gw_own = pk.syn(flags="SA", src="10.0.0.1", dst="10.0.0.2")
    tc(programs, "tc_lan_egress", gw_own, Reason.LAN_OUT_NO_TUNNEL, PASS)
    assert dp.slot_counters(SLOT).clear_to_tunnel_packets == 1
    dp.remove_clamp_prefix("10.0.0.0/24")
    clamp(programs, pk.syn(dst="10.0.0.1"), 1360, Reason.LAN_MSS_CLAMPED)
