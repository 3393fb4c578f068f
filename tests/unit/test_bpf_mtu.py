"""Tunnel MTU arithmetic (bpf/mtu.py) against sizes worked out by hand from RFC 4303."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpf.mtu import EspOverhead, MtuError, mss_for_mtu, tunnel_mtu

GCM = EspOverhead(iv_size=8, icv_size=16, block_size=4)
CBC_SHA256 = EspOverhead(iv_size=16, icv_size=16, block_size=16)


def esp_wire_size(inner: int, o: EspOverhead, *, outer: int, udp: int) -> int:
    """Size of one tunnel-mode ESP packet carrying `inner` bytes, built field by field."""
    pad = -(inner + 2) % o.align
    return outer + udp + 8 + o.iv_size + inner + pad + 2 + o.icv_size


@pytest.mark.parametrize(
    "proposal, kwargs, mtu",
    [
        ("aes256gcm16", {}, 1446),  # 1500-20-8-8-16 = 1448 -> 1446
        ("aes128gcm16", {"udp_encap": True}, 1438),  # 8 more for UDP: 1440 -> 1438
        ("aes256gcm16", {"outer_ipv6": True}, 1426),  # 1500-40-32 = 1428 -> 1426
        ("chacha20poly1305", {}, 1446),
        ("aes128-sha256", {}, 1438),  # 1500-20-8-16-16 = 1440 -> 1438
        ("aes256-sha512", {}, 1422),  # ICV 32: 1424 -> 1422
        ("aes256-sha384-esn", {"udp_encap": True}, 1422),  # 1500-20-8-8-16-24=1424 -> 1422
    ],
)
def test_known_suites(proposal: str, kwargs: dict[str, bool], mtu: int) -> None:
    o = EspOverhead.of_proposal(proposal)
    assert o is not None
    assert tunnel_mtu(1500, o, **kwargs) == mtu  # type: ignore[arg-type]


def test_fallback_is_not_a_worst_case_bound() -> None:
    """physical - 80 covers AES-GCM over IPv4 with NAT-T, not IPv6 + NAT-T (82 bytes)."""
    assert tunnel_mtu(1500, GCM, udp_encap=True) > 1420
    assert tunnel_mtu(1500, GCM, udp_encap=True, outer_ipv6=True) == 1418


def test_unknown_suite_falls_back_to_minus_80() -> None:
    assert EspOverhead.of_proposal("des-md5") is None
    assert tunnel_mtu(1500, None) == 1420
    assert tunnel_mtu(9000, EspOverhead.of_proposal("nonsense")) == 8920


@given(
    phys=st.integers(200, 9216),
    o=st.sampled_from([GCM, CBC_SHA256, EspOverhead(16, 12, 16), EspOverhead(8, 24, 4)]),
    v6=st.booleans(),
    udp=st.booleans(),
)
def test_result_is_the_largest_packet_that_fits(
    phys: int, o: EspOverhead, v6: bool, udp: bool
) -> None:
    mtu = tunnel_mtu(phys, o, outer_ipv6=v6, udp_encap=udp)
    outer, u = (40 if v6 else 20), (8 if udp else 0)
    assert esp_wire_size(mtu, o, outer=outer, udp=u) <= phys
    assert esp_wire_size(mtu + 1, o, outer=outer, udp=u) > phys


def test_transport_mode_pads_only_the_payload() -> None:
    mtu = tunnel_mtu(1500, CBC_SHA256, mode="transport")
    # IP header 20 stays; ESP around the rest: 20 + 8 + 16 + roundup(P-20+2, 16) + 16
    payload = mtu - 20
    assert 20 + 8 + 16 + payload + 2 + (-(payload + 2) % 16) + 16 <= 1500
    assert mtu == 1458


def test_mss_and_impossible_mtus() -> None:
    assert mss_for_mtu(1446, ipv6=False) == 1406
    assert mss_for_mtu(1446, ipv6=True) == 1386
    with pytest.raises(MtuError):
        tunnel_mtu(60, GCM)
    with pytest.raises(MtuError):
        mss_for_mtu(40, ipv6=False)


def test_of_suite_uses_the_engine_suite_shape() -> None:
    from ike.crypto import ENCR, INTEG
    from ike.proposals import EspSuite

    cbc = next(e for e in ENCR.values() if e.name == "aes256")
    sha = next(i for i in INTEG.values() if i.name == "sha256")
    assert EspOverhead.of_suite(EspSuite(cbc, sha, False)) == CBC_SHA256
