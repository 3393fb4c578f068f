"""ChildSaSpec validation, the replay-window rule, parsers, errors, event decoding."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from gateway.xfrm import netlink as nl
from gateway.xfrm import wire
from gateway.xfrm.errors import XfrmError
from gateway.xfrm.events import SaExpired, decode_event
from gateway.xfrm.manager import InstalledChildSa, OwnedRange, parse_xfrm_stat, state_body
from gateway.xfrm.offload import parse_ethtool_features
from gateway.xfrm.spec import (
    DEFAULT_REPLAY_WINDOW,
    ChildSaSpec,
    EspTransform,
    SaKeys,
    TrafficSelector,
    replay_window_for,
)

GCM = EspTransform(aead="rfc4106(gcm(aes))")


def make(**kw: object) -> ChildSaSpec:
    base: dict[str, object] = dict(
        local=ipaddress.ip_address("192.0.2.1"),
        remote=ipaddress.ip_address("192.0.2.2"),
        spi_in=0x1000,
        spi_out=0x2000,
        reqid=0x4E470000,
        esp=GCM,
        keys_in=SaKeys(b"k" * 20),
        keys_out=SaKeys(b"K" * 20),
        mode="transport",
    )
    base.update(kw)
    return ChildSaSpec(**base)  # type: ignore[arg-type]


def test_replay_window_rule() -> None:
    assert DEFAULT_REPLAY_WINDOW == 1024  # 10 Gbit/s, 1 ms reordering, 1500-byte packets
    assert replay_window_for(1e9, 1e-3) == 128  # 83 packets -> 128
    assert replay_window_for(100e9, 10e-3) == 4096  # capped at the kernel's bitmap
    assert replay_window_for(1e6, 1e-3) == 32


@pytest.mark.parametrize(
    "bad",
    [
        dict(spi_in=0x10),  # RFC 4303 §2.1: SPIs 1..255 are reserved
        dict(remote=ipaddress.ip_address("2001:db8::2")),
        dict(replay_window=5000),
        dict(esn=True, replay_window=0),
        dict(offload="turbo"),  # offload_dev may be left out: the route's device
        dict(mode="beet"),
        dict(mode="tunnel"),  # tunnel without selectors
        dict(
            local_ts=(TrafficSelector.parse("10.0.0.0/8", port=80),),
            remote_ts=(TrafficSelector.parse("10.1.0.0/16"),),
        ),
    ],
)
def test_spec_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(**bad).selectors  # noqa: B018 - some checks are lazy (selectors)


def test_transform_rules_and_secrets() -> None:
    with pytest.raises(ValueError):
        EspTransform()
    with pytest.raises(ValueError):
        EspTransform(aead="rfc4106(gcm(aes))", integ="hmac(sha256)")
    spec = make()
    assert "kkkk" not in repr(spec) and "KKKK" not in repr(InstalledChildSa(spec))
    assert [str(t) for pair in spec.selectors for t in pair] == ["192.0.2.1/32", "192.0.2.2/32"]


def test_owned_range_and_error_text() -> None:
    owned = OwnedRange(first=100, size=10)
    assert 100 in owned and 109 in owned and 110 not in owned and 7 not in owned
    err = XfrmError("NEWSA SA in spi=0x00001000", errno.EEXIST)
    assert str(err) == "NEWSA SA in spi=0x00001000: File exists (EEXIST)"
    assert (err.operation, err.errno) == ("NEWSA SA in spi=0x00001000", errno.EEXIST)
    err = XfrmError("NEWSA x", errno.EINVAL, "Replay window should be 0")
    assert str(err) == "NEWSA x: Replay window should be 0 (EINVAL)"


def test_parsers() -> None:
    stat = parse_xfrm_stat("XfrmInError             \t0\nXfrmInNoStates   \t12\nbogus\n")
    assert stat == {"XfrmInError": 0, "XfrmInNoStates": 12}
    feats = parse_ethtool_features(
        "Features for eth0:\nesp-hw-offload: off [fixed]\n"
        "esp-tx-csum-hw-offload: on\ntx-esp-segmentation: off\n"
    )
    assert not feats["esp-hw-offload"].available
    assert feats["esp-tx-csum-hw-offload"].enabled
    assert feats["tx-esp-segmentation"].available


def test_expire_event_decodes() -> None:
    """An XFRM_MSG_EXPIRE as the kernel sends it: xfrm_user_expire + attributes."""
    spec = make()
    info = state_body(spec, False)
    head, attrs = info[: wire.USERSA_INFO.size], info[wire.USERSA_INFO.size :]
    body = head + bytes([1]) + bytes(7) + attrs  # hard = 1, padding to 232 bytes
    (msg,) = list(nl.MarshalXfrm().parse(wire.message(nl.XFRM_MSG_EXPIRE, 0, 0, body)))
    event = decode_event(msg)
    assert isinstance(event, SaExpired) and event.hard
    assert (event.sa.spi, event.sa.reqid, str(event.sa.dst)) == (0x2000, spec.reqid, "192.0.2.2")
    assert event.sa.aead == "rfc4106(gcm(aes))"
