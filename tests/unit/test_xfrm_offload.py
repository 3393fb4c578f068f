"""Offload rules of the XFRM manager against a fake kernel (the real one: the netdevsim
kernel test, tests/kernel/test_offload_kernel.py).

The fake keeps the states it is sent and answers GETSA with them, and its device either
grants the asked offload, silently drops it (what Linux does for a device without IPsec
offload, e.g. veth) or refuses the state (what it does when the driver says no). The
tests check what each mode makes of that: `auto` falls back with a reason, `crypto` and
`packet` fail naming the device and leave nothing, rekeys and migrations ask again and
read back, a failed migration puts the old (offloaded) states back.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import struct
from typing import Any

import pytest

from gateway.xfrm import XfrmError, XfrmManager
from gateway.xfrm import netlink as nl
from gateway.xfrm.channel import Failure
from gateway.xfrm.offload import OffloadCapabilities, parse_ethtool_features, route_device
from gateway.xfrm.scan import field_offsets
from tests.support.xfrm import V4_TUNNEL, spec_pair

SA = field_offsets(nl.USERSA_INFO)
SA_SIZE = nl.layout_size(nl.USERSA_INFO)
ID_SIZE = nl.layout_size(nl.USERSA_ID)
XFRMA_OFFLOAD_DEV = 28


def _attrs(body: bytes, start: int) -> list[tuple[int, bytes]]:
    out, pos = [], start
    while pos + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, pos)
        out.append((atype, body[pos : pos + alen]))
        pos += (alen + 3) & ~3
    return out


class FakeKernel:
    """A channel whose 'device' (ifindex 1, lo) treats offload per `behaviour`:
    grant | silent | refuse | refuse-packet (packet refused, crypto granted)."""

    netns = None

    def __init__(self, behaviour: str = "grant") -> None:
        self.behaviour = behaviour
        self.only_to: set[str] = set()  # behaviour only for states to these; others: grant
        self.states: dict[tuple[bytes, int], bytes] = {}
        self.policy_offloads: list[bytes] = []
        self.log: list[str] = []
        self._seq = 0
        self.marshal = nl.MarshalXfrm()

    def reserve_seqs(self, count: int) -> int:
        self._seq += count
        return self._seq - count + 1

    def _key(self, body: bytes, info: bool) -> tuple[bytes, int]:
        if info:
            daddr = body[SA["id_daddr"] : SA["id_daddr"] + 16]
            (spi,) = struct.unpack_from(">I", body, SA["id_spi"])
        else:
            daddr, (spi,) = body[:16], struct.unpack_from(">I", body, 16)
        return daddr, spi

    def send_batch(self, messages: list[bytes]) -> list[Failure]:
        failures = []
        for m in messages:
            _len, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", m)
            body = m[16:]
            name = nl.MSG_NAMES[mtype]
            self.log.append(name)
            if mtype == nl.XFRM_MSG_NEWSA:
                off = [a for a in _attrs(body, SA_SIZE) if a[0] == XFRMA_OFFLOAD_DEV]
                daddr = ipaddress.ip_address(body[SA["id_daddr"] : SA["id_daddr"] + 4])
                if off and (not self.only_to or str(daddr) in self.only_to):
                    flags = off[0][1][8]
                    packet = bool(flags & nl.XFRM_OFFLOAD_PACKET)
                    if self.behaviour == "refuse" or (self.behaviour == "refuse-packet" and packet):
                        failures.append(Failure(seq, errno.EINVAL, "Device failed to offload"))
                        continue
                    if self.behaviour == "silent":
                        body = body[:SA_SIZE] + b"".join(
                            raw for t, raw in _attrs(body, SA_SIZE) if t != XFRMA_OFFLOAD_DEV
                        )
                self.states[self._key(body, True)] = body
            elif mtype == nl.XFRM_MSG_DELSA:
                if self.states.pop(self._key(body, False), None) is None:
                    failures.append(Failure(seq, errno.ESRCH, "No such process"))
            elif mtype in (nl.XFRM_MSG_NEWPOLICY, nl.XFRM_MSG_UPDPOLICY):
                size = nl.layout_size(nl.USERPOLICY_INFO)
                self.policy_offloads += [
                    raw for t, raw in _attrs(body, size) if t == XFRMA_OFFLOAD_DEV
                ]
        return failures

    def request(self, msg_type: int, payload: bytes, operation: str) -> Any:
        assert msg_type == nl.XFRM_MSG_GETSA
        body = self.states.get(self._key(payload, False))
        if body is None:
            raise XfrmError(operation, errno.ESRCH, "No such process")
        msg = struct.pack("=IHHII", 16 + len(body), nl.XFRM_MSG_NEWSA, 0, 1, 0) + body
        return next(iter(self.marshal.parse(msg)))

    def offload_of(self, daddr: str, spi: int) -> int | None:
        """Flags of the XFRMA_OFFLOAD_DEV the kernel kept for a state (None: none)."""
        key = (ipaddress.ip_address(daddr).packed.ljust(16, b"\0"), spi)
        for t, raw in _attrs(self.states[key], SA_SIZE):
            if t == XFRMA_OFFLOAD_DEV:
                return raw[8]
        return None


def child(mode: str, dev: str | None = "lo", esn: bool = False, **kw: Any) -> Any:
    spec, _ = spec_pair(
        V4_TUNNEL,
        XfrmManager(FakeKernel()).allocate_reqid(),  # type: ignore[arg-type]
        mode="tunnel",
        encap=False,
        offload=mode,
        offload_dev=dev,
        esn=esn,
        **kw,
    )
    return spec


def manager(behaviour: str) -> tuple[XfrmManager, FakeKernel]:
    kernel = FakeKernel(behaviour)
    return XfrmManager(kernel), kernel  # type: ignore[arg-type]


def test_crypto_granted_is_read_back_per_direction() -> None:
    mgr, kernel = manager("grant")
    spec = child("crypto")
    installed = mgr.install(spec)
    assert (installed.offload_in, installed.offload_out, installed.offload) == ("crypto",) * 3
    assert (installed.offload_dev, installed.offload_reason) == ("lo", "")
    # XFRM_OFFLOAD_INBOUND on the inbound state only
    assert kernel.offload_of("192.0.2.1", spec.spi_in) == nl.XFRM_OFFLOAD_INBOUND
    assert kernel.offload_of("192.0.2.2", spec.spi_out) == 0
    assert kernel.policy_offloads == []  # crypto offload: policies stay in software


def test_auto_falls_back_with_the_reason() -> None:
    for behaviour, words in (("silent", "no IPsec offload"), ("refuse", "lo refused crypto")):
        mgr, kernel = manager(behaviour)
        installed = mgr.install(child("auto"))
        assert installed.offload == "none" and installed.offload_dev == "lo"
        assert words in installed.offload_reason, installed.offload_reason
        assert len(kernel.states) == 2  # in software, both directions


def test_crypto_refused_or_silently_dropped_fails_naming_the_device() -> None:
    mgr, kernel = manager("refuse")
    with pytest.raises(XfrmError) as info:
        mgr.install(child("crypto"))
    assert info.value.errno == errno.EINVAL
    assert "with crypto offload on lo" in info.value.operation
    assert "lo refused crypto offload: Device failed to offload" in info.value.reason
    assert kernel.states == {}

    mgr, kernel = manager("silent")
    with pytest.raises(XfrmError) as info:
        mgr.install(child("crypto"))
    assert info.value.errno == errno.EOPNOTSUPP and "lo has no IPsec offload" in str(info.value)
    assert kernel.states == {} and "DELSA" in kernel.log


def test_packet_offload_puts_policies_on_the_device_or_fails() -> None:
    mgr, kernel = manager("grant")
    installed = mgr.install(child("packet"))
    assert installed.offload == "packet"
    assert len(kernel.policy_offloads) == 3  # in, fwd, out: each with the device
    assert all(raw[8] == nl.XFRM_OFFLOAD_PACKET for raw in kernel.policy_offloads)

    mgr, kernel = manager("refuse-packet")
    with pytest.raises(XfrmError, match="refused packet offload"):
        mgr.install(child("packet"))
    assert kernel.states == {}
    installed = mgr.install(child("auto"))  # auto asks for crypto only
    assert installed.offload == "crypto"


def test_rekey_asks_again_and_keeps_the_old_sa_on_failure() -> None:
    mgr, kernel = manager("grant")
    spec = child("crypto")
    old = mgr.install(spec)
    new_spec = dataclasses.replace(spec, spi_in=spec.spi_in + 16, spi_out=spec.spi_out + 16)
    new = mgr.replace(old, new_spec)
    assert new.offload == "crypto" and kernel.offload_of("192.0.2.2", new_spec.spi_out) == 0
    assert len(kernel.states) == 2  # the old pair is gone

    # the device stops granting: the rekey fails, the SA in use stays as it was
    kernel.behaviour = "silent"
    newer = dataclasses.replace(new_spec, spi_in=spec.spi_in + 32, spi_out=spec.spi_out + 32)
    with pytest.raises(XfrmError, match="no IPsec offload"):
        mgr.replace(new, newer)
    assert set(kernel.states) == {
        (ipaddress.ip_address("192.0.2.1").packed.ljust(16, b"\0"), new_spec.spi_in),
        (ipaddress.ip_address("192.0.2.2").packed.ljust(16, b"\0"), new_spec.spi_out),
    }

    # the responder's two steps
    kernel.behaviour = "grant"
    half = mgr.replace(new, newer, outbound=False, keep_old_inbound=True)
    assert (half.offload_in, half.offload_out) == ("crypto", "none")
    done = mgr.switch_outbound(new, half)
    assert (done.offload_in, done.offload_out) == ("crypto", "crypto")


def test_migrate_keeps_offload_and_restores_it_on_failure() -> None:
    mgr, kernel = manager("grant")
    spec = child("crypto")
    installed = mgr.install(spec)
    moved = mgr.migrate(
        installed, ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
    )
    assert moved.offload == "crypto" and moved.offload_dev == "lo"
    assert kernel.offload_of("198.51.100.1", spec.spi_in) == nl.XFRM_OFFLOAD_INBOUND
    assert kernel.offload_of("198.51.100.2", spec.spi_out) == 0

    kernel.behaviour = "refuse"
    kernel.only_to = {"192.0.2.1", "192.0.2.2"}  # the device refuses the new addresses only
    with pytest.raises(XfrmError, match="lo refused crypto offload"):
        mgr.migrate(moved, ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
    # the old states are back where they were, offloaded as before
    assert kernel.offload_of("198.51.100.1", spec.spi_in) == nl.XFRM_OFFLOAD_INBOUND
    assert kernel.offload_of("198.51.100.2", spec.spi_out) == 0
    assert len(kernel.states) == 2
    # a device that refuses the old states too: they come back in software, not lost
    kernel.only_to = set()
    with pytest.raises(XfrmError, match="lo refused crypto offload"):
        mgr.migrate(moved, ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
    assert kernel.offload_of("198.51.100.2", spec.spi_out) is None and len(kernel.states) == 2
    kernel.only_to = {"192.0.2.1", "192.0.2.2"}

    # auto: the move happens in software, with the reason
    auto = dataclasses.replace(moved, spec=dataclasses.replace(moved.spec, offload="auto"))
    soft = mgr.migrate(auto, ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
    assert soft.offload == "none" and "lo refused crypto offload" in soft.offload_reason
    assert kernel.offload_of("192.0.2.2", spec.spi_out) is None


def test_offload_device_defaults_to_the_routes_device() -> None:
    assert route_device("127.0.0.2") == "lo"
    assert route_device(ipaddress.ip_address("::1")) == "lo"
    mgr, kernel = manager("grant")
    spec = dataclasses.replace(
        child("crypto", dev=None),
        local=ipaddress.ip_address("127.0.0.1"),
        remote=ipaddress.ip_address("127.0.0.2"),
    )
    assert mgr.install(spec).offload_dev == "lo"


def test_capabilities_for_doctor() -> None:
    veth = OffloadCapabilities(
        "eth0",
        parse_ethtool_features(
            "esp-hw-offload: off [fixed]\nesp-tx-csum-hw-offload: off [fixed]\n"
            "tx-esp-segmentation: off [fixed]\n"
        ),
        kernel="6.18.1",
    )
    assert (veth.crypto, veth.packet, veth.modes) == (False, "no", ("no", "auto"))
    nic = parse_ethtool_features(
        "esp-hw-offload: on [fixed]\nesp-tx-csum-hw-offload: on [fixed]\n"
        "tx-esp-segmentation: on [fixed]\n"
    )
    old = OffloadCapabilities("eni1np1", nic, kernel="6.1.0-57-amd64")
    assert (old.crypto, old.crypto_enabled, old.tx_csum, old.packet) == (True, True, True, "no")
    assert old.modes == ("no", "auto", "crypto") and "needs Linux >= 6.2" in old.summary
    new = OffloadCapabilities("eni1np1", nic, kernel="6.8.0")
    assert new.packet == "unknown" and new.modes[-1] == "packet"
