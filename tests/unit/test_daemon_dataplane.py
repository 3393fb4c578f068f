"""gateway/dataplane/xfrm.py: a negotiated Child SA (engine event) becomes the XFRM backend's
ChildSaSpec with the right algorithms, keys per direction, selectors, encapsulation,
limits and offload; what cannot be expressed is a DataplaneError; keys never show in
reprs. The `none` data plane records without installing."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from gateway.config.reader import parse_config
from gateway.dataplane.base import DataplaneError
from gateway.dataplane.none import NoneDataplane
from gateway.dataplane.xfrm import child_sa_spec
from gateway.xfrm import TrafficSelector
from ike import events as ev
from ike.ts import ts_from_text

KEY_IN, KEY_OUT = bytes(range(36)), bytes(range(100, 136))


def event(**overrides: object) -> ev.ChildSaEstablished:
    fields: dict[str, object] = dict(
        ike_sa=1,
        connection="east",
        child="net",
        initiator=True,
        spi_in=0xC0000001,
        spi_out=0xC0000002,
        mode="tunnel",
        local_addr="192.0.2.1",
        remote_addr="192.0.2.2",
        encap=None,
        local_ts=(ts_from_text("10.1.0.0/24"),),
        remote_ts=(ts_from_text("10.2.0.0/24"),),
        proposal="aes256gcm16",
        encr_alg="rfc4106(gcm(aes))",
        icv_bits=128,
        integ_alg=None,
        integ_trunc_bits=0,
        esn=False,
        encr_key_in=KEY_IN,
        encr_key_out=KEY_OUT,
        integ_key_in=b"",
        integ_key_out=b"",
        time=1.0,
    )
    fields.update(overrides)
    return ev.ChildSaEstablished(**fields)  # type: ignore[arg-type]


CHILD = (
    parse_config(
        '[connections.c]\nlocal = { auth = "psk" }\nremote = { auth = "psk" }\n'
        'psk = "lab-secret-123456"\noffload = "auto"\n[connections.c.children.net]\n'
        'rekey_bytes = "1G"\nlife_packets = 1000000\nlife_time = "2h"\nreplay_window = 256\n'
    )
    .connections[0]
    .children[0]
)


def test_aead_child() -> None:
    spec = child_sa_spec(event(), None, 0x4E470001)
    assert (spec.local, spec.remote) == (
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("192.0.2.2"),
    )
    assert (spec.spi_in, spec.spi_out, spec.reqid) == (0xC0000001, 0xC0000002, 0x4E470001)
    assert (spec.esp.aead, spec.esp.icv_bits, spec.esp.crypt) == ("rfc4106(gcm(aes))", 128, None)
    assert (spec.keys_in.encr, spec.keys_out.encr) == (KEY_IN, KEY_OUT)
    assert spec.local_ts == (TrafficSelector(ipaddress.ip_network("10.1.0.0/24")),)
    assert spec.remote_ts == (TrafficSelector(ipaddress.ip_network("10.2.0.0/24")),)
    assert spec.mode == "tunnel" and spec.encap is None and spec.offload == "no"
    assert KEY_IN.hex() not in repr(spec) and str(KEY_IN) not in repr(spec)


def test_cbc_hmac_nat_transport_child() -> None:
    spec = child_sa_spec(
        event(
            encr_alg="cbc(aes)",
            integ_alg="hmac(sha256)",
            integ_trunc_bits=128,
            integ_key_in=b"i" * 32,
            integ_key_out=b"o" * 32,
            encap=(4500, 4501),
            mode="transport",
            local_ts=(ts_from_text("192.0.2.1/32"),),
            remote_ts=(ts_from_text("192.0.2.2/32[tcp/443]"),),
        ),
        None,
        0x4E470002,
    )
    assert (spec.esp.crypt, spec.esp.integ, spec.esp.trunc_bits) == (
        "cbc(aes)",
        "hmac(sha256)",
        128,
    )
    assert (spec.keys_in.integ, spec.keys_out.integ) == (b"i" * 32, b"o" * 32)
    assert (spec.encap.local_port, spec.encap.remote_port) == (4500, 4501)
    assert spec.mode == "transport"
    assert spec.remote_ts == (TrafficSelector(ipaddress.ip_network("192.0.2.2/32"), 6, 443),)


def test_address_range_selector_is_split_into_networks() -> None:
    spec = child_sa_spec(event(local_ts=(ts_from_text("10.0.0.1-10.0.0.6"),)), None, 1)
    assert [str(ts.net) for ts in spec.local_ts] == [
        "10.0.0.1/32",
        "10.0.0.2/31",
        "10.0.0.4/31",
        "10.0.0.6/32",
    ]


def test_what_xfrm_cannot_express_is_a_dataplane_error() -> None:
    with pytest.raises(DataplaneError, match="port range 1000-2000"):
        child_sa_spec(event(remote_ts=(ts_from_text("10.2.0.0/24[udp/1000-2000]"),)), None, 1)
    with pytest.raises(DataplaneError, match="east.net"):
        child_sa_spec(event(spi_in=5), None, 1)  # SPIs 1..255 are reserved


def test_config_limits_and_offload() -> None:
    from gateway.xfrm.netlink import XFRM_INF

    spec = child_sa_spec(event(), CHILD, 1)
    lt = spec.lifetime
    assert (lt.soft_bytes, lt.hard_bytes) == (1 << 30, int((1 << 30) * 1.1))
    assert (lt.soft_packets, lt.hard_packets) == (XFRM_INF, 1000000)
    assert (lt.soft_seconds, lt.hard_seconds) == (0, 7200)
    assert spec.replay_window == 256
    # offload asked everywhere: no device named = the route's (found by the XFRM backend)
    assert (spec.offload, spec.offload_dev, spec.set_mark) == ("auto", None, None)
    child = dataclasses.replace(CHILD, offload_interface="nsim0", set_mark_out=0x64)
    spec = child_sa_spec(event(), child, 1)
    assert (spec.offload, spec.offload_dev, spec.set_mark) == ("auto", "nsim0", 0x64)
    spec = child_sa_spec(event(), dataclasses.replace(child, offload="no"), 1)
    assert (spec.offload, spec.offload_dev, spec.set_mark) == ("no", None, 0x64)


def test_none_dataplane_records_only() -> None:
    dp = NoneDataplane()
    sa = dp.install(event(), None)
    assert (sa.spi_in, sa.spi_out, sa.offload) == (0xC0000001, 0xC0000002, "none")
    assert dp.counters(sa).bytes_in == 0 and dp.errors() == {}
    new = dp.replace(sa, event(spi_in=0xC0000003, spi_out=0xC0000004), None)
    assert list(dp.installed) == [0xC0000003]
    dp.remove(new)
    assert dp.installed == {}


def test_route_based_child_spec_carries_its_if_ids() -> None:
    """The child's if_id_in/if_id_out reach the spec (if_id_out only where it differs);
    the trap of such a child carries them too."""
    import dataclasses

    from gateway.dataplane.base import TrapSpec
    from gateway.dataplane.xfrm import trap_sa_spec

    same = dataclasses.replace(CHILD, if_id_in=7, if_id_out=7)
    spec = child_sa_spec(event(), same, 1)
    assert (spec.if_id, spec.if_id_out) == (7, None)
    split = dataclasses.replace(CHILD, if_id_in=7, if_id_out=9)
    spec = child_sa_spec(event(), split, 1)
    assert (spec.direction_if_id(True), spec.direction_if_id(False)) == (7, 9)
    trap = TrapSpec(
        "c", "net", "192.0.2.1", "192.0.2.2", ("0.0.0.0/0",), ("0.0.0.0/0",), "tunnel", 7, 9
    )
    assert trap_sa_spec(trap, 1).direction_if_id(False) == 9
