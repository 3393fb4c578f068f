"""updown hooks, the pure parts: the environment a program gets, verbs, argv, redaction.
(Running programs: tests/host/test_hooks_host.py.)"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from gateway.routing.hooks import (
    ChildInfo,
    HookEvent,
    HookRunner,
    hook_environment,
    program_argv,
    redact,
)
from gateway.xfrm.spec import ChildSaSpec, EspTransform, Mark, SaKeys, TrafficSelector, UdpEncap

KEY_IN = bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415")
KEY_OUT = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5")


def spec(**kw: object) -> ChildSaSpec:
    base: dict[str, object] = dict(
        local=ipaddress.ip_address("192.0.2.1"),
        remote=ipaddress.ip_address("198.51.100.7"),
        spi_in=0xC1000001,
        spi_out=0x0000AB02,
        reqid=0x4E470005,
        esp=EspTransform(aead="rfc4106(gcm(aes))"),
        keys_in=SaKeys(KEY_IN),
        keys_out=SaKeys(KEY_OUT),
        local_ts=(TrafficSelector.parse("10.1.0.0/24"), TrafficSelector.parse("fd00:1::/64")),
        remote_ts=(
            TrafficSelector.parse("10.2.0.0/16", proto=6, port=443),
            TrafficSelector.parse("fd00:2::/64"),
        ),
        encap=UdpEncap(4500, 31000),
        if_id=42,
        mark=Mark(7, 0xFF),
    )
    base.update(kw)
    return ChildSaSpec(**base)  # type: ignore[arg-type]


def child(**kw: object) -> ChildInfo:
    info = ChildInfo.from_spec(
        spec(),
        "site-east",
        "net",
        unique_id=12,
        local_id="west.example",
        remote_id="east.example",
        interface="ipsec-east",
        proposal="aes256gcm16",
        mtu=1438,
        route_table=220,
        route_metric=100,
    )
    return dataclasses.replace(info, **kw)  # type: ignore[arg-type]


def envs(event: HookEvent) -> list[dict[str, str]]:
    return [hook_environment(event, lt, rt) for lt, rt in event.child.selector_pairs()]


def test_up_environment_per_selector_pair() -> None:
    """One run per same-family pair, strongSwan's PLUTO_* names and formats."""
    v4, v6 = envs(HookEvent("up", child()))
    assert v4 == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PLUTO_VERSION": "1.1",
        "PLUTO_VERB": "up-client",
        "PLUTO_CONNECTION": "net",
        "PLUTO_INTERFACE": "ipsec-east",
        "PLUTO_REQID": str(0x4E470005),
        "PLUTO_PROTO": "esp",
        "PLUTO_UNIQUEID": "12",
        "PLUTO_ME": "192.0.2.1",
        "PLUTO_MY_ID": "west.example",
        "PLUTO_MY_CLIENT": "10.1.0.0/24",
        "PLUTO_MY_PORT": "0",
        "PLUTO_MY_PROTOCOL": "0",
        "PLUTO_PEER": "198.51.100.7",
        "PLUTO_PEER_ID": "east.example",
        "PLUTO_PEER_CLIENT": "10.2.0.0/16",
        "PLUTO_PEER_PORT": "443",
        "PLUTO_PEER_PROTOCOL": "6",
        "PLUTO_MARK_IN": "7/0x000000ff",
        "PLUTO_MARK_OUT": "7/0x000000ff",
        "PLUTO_IF_ID_IN": "42",
        "PLUTO_IF_ID_OUT": "42",
        "PLUTO_UDP_ENC": "31000",
        "GW_EVENT": "up",
        "GW_CONNECTION": "site-east",
        "GW_CHILD": "net",
        "GW_MODE": "tunnel",
        "GW_SPI_IN": "c1000001",
        "GW_SPI_OUT": "0000ab02",
        "GW_ESP": "aes256gcm16",
        "GW_MTU": "1438",
        "GW_ROUTE_TABLE": "220",
        "GW_ROUTE_METRIC": "100",
    }
    assert v6["PLUTO_VERB"] == "up-client-v6"
    assert (v6["PLUTO_MY_CLIENT"], v6["PLUTO_PEER_CLIENT"]) == ("fd00:1::/64", "fd00:2::/64")


def test_down_and_rekey() -> None:
    (down, _) = envs(HookEvent("down", child(), reason="dpd"))
    assert down["PLUTO_VERB"] == "down-client" and down["GW_REASON"] == "dpd"
    (rekey, _) = envs(HookEvent("rekey", child(), old_spi_in=0xC0FFEE01, old_spi_out=0x102))
    assert rekey["PLUTO_VERB"] == "rekey-client"
    assert (rekey["GW_OLD_SPI_IN"], rekey["GW_OLD_SPI_OUT"]) == ("c0ffee01", "00000102")


def test_host_verbs() -> None:
    """-host when the local selector is our own address (transport mode, or a host
    selector on the gateway); the family suffix follows our address then."""
    transport = child(mode="transport", local_ts=(), remote_ts=())
    (env,) = envs(HookEvent("up", transport))
    assert env["PLUTO_VERB"] == "up-host"
    assert (env["PLUTO_MY_CLIENT"], env["PLUTO_PEER_CLIENT"]) == (
        "192.0.2.1/32",
        "198.51.100.7/32",
    )
    v6 = child(
        local=ipaddress.ip_address("2001:db8::1"),
        remote=ipaddress.ip_address("2001:db8::2"),
        local_ts=(TrafficSelector.parse("2001:db8::1/128"),),
        remote_ts=(TrafficSelector.parse("::/0"),),
    )
    (env,) = envs(HookEvent("down", v6))
    assert env["PLUTO_VERB"] == "down-host-v6"


def test_optional_variables_absent_when_unknown() -> None:
    bare = child(
        if_id_in=None,
        if_id_out=None,
        mark_in=None,
        mark_out=None,
        udp_encap_port=None,
        interface="",
        proposal="",
        mtu=None,
        route_table=None,
        route_metric=None,
    )
    (env, _) = envs(HookEvent("up", bare))
    for name in ("PLUTO_IF_ID_IN", "PLUTO_MARK_OUT", "PLUTO_UDP_ENC", "GW_REASON", "GW_MTU"):
        assert name not in env
    assert env["PLUTO_INTERFACE"] == "unknown"


def test_no_key_material_reaches_a_hook() -> None:
    """ChildInfo has no key fields, so neither the environment nor repr can carry them."""
    info = child()
    assert not {f.name for f in dataclasses.fields(ChildInfo)} & {"keys_in", "keys_out"}
    text = repr(info) + repr(envs(HookEvent("up", info)))
    for key in (KEY_IN, KEY_OUT):
        assert key.hex() not in text and key.hex().upper() not in text


def test_program_argv_and_redaction() -> None:
    assert program_argv("/etc/gateway/updown.sh iptables") == [
        "/etc/gateway/updown.sh",
        "iptables",
    ]
    assert program_argv(["/x y/z", "a b"]) == ["/x y/z", "a b"]
    assert program_argv("'/opt/my hooks/up' --v") == ["/opt/my hooks/up", "--v"]
    for bad in ("", "   ", []):
        with pytest.raises(ValueError):
            program_argv(bad)
    assert redact("psk=hunter2 again hunter2", ["hunter2", ""]) == (
        "psk=<redacted> again <redacted>"
    )


def test_runner_arguments_are_checked() -> None:
    for kw in ({"timeout": 0}, {"max_concurrent": 0}, {"grace": -1}):
        with pytest.raises(ValueError):
            HookRunner(**kw)  # type: ignore[arg-type]
