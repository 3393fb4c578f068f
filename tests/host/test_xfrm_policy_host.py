"""XFRM policies on the host kernel (it has XFRM but no ESP), in namespaces we create.

Policies, ACQUIRE and reconcile need no ESP; what needs ESP is in tests/kernel.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from gateway.netns import Netns
from gateway.xfrm import (
    Acquire,
    EspTransform,
    PolicyExpired,
    XfrmError,
    XfrmEvent,
    XfrmEventReader,
    XfrmManager,
    offload_capabilities,
)
from gateway.xfrm.bypass import enable_esp_in_udp
from gateway.xfrm.channel import in_netns
from tests.support.xfrm import (
    V4_TRANSPORT,
    V6_TUNNEL,
    add_foreign_policy,
    ip_xfrm_blocks,
    spec_pair,
)


def test_policies_trap_acquire_reconcile(netns_pair: tuple[Netns, Netns]) -> None:
    a, _b = netns_pair
    with XfrmManager(netns=a.name) as mgr:
        # A refused Child leaves nothing: its policies were accepted in the same batch
        # as the refused state, and rolled back.
        bad, _ = spec_pair(
            V6_TUNNEL,
            mgr.allocate_reqid(),
            mode="tunnel",
            encap=False,
            esp=EspTransform(aead="rfc4106(gcm(nosuchcipher))"),
        )
        with pytest.raises(XfrmError) as info:
            mgr.install(bad)
        assert info.value.operation.startswith("NEWSA SA in spi=")
        assert info.value.errno > 0 and info.value.reason
        assert mgr.states() == [] and mgr.policies() == []
        assert a.ip("xfrm", "policy").stdout.strip() == ""

        # Trap policies (v4 transport, v6 tunnel) read back as iproute2 prints them.
        trap4, _ = spec_pair(V4_TRANSPORT, mgr.allocate_reqid(), mode="transport", encap=False)
        trap6, _ = spec_pair(V6_TUNNEL, mgr.allocate_reqid(), mode="tunnel", encap=False)
        mgr.install_trap(trap4)
        mgr.install_trap(trap6)
        blocks = ip_xfrm_blocks(a, "policy")
        ours = mgr.policies()
        assert len(ours) == len(blocks) == 2
        for pol in ours:
            (tmpl,) = pol.templates
            block = next(b for b in blocks if f"reqid {tmpl.reqid} " in b)
            assert block.startswith(f"src {pol.selector.src} dst {pol.selector.dst}")
            assert f"dir out priority {pol.priority} " in block
            if tmpl.mode == 1:
                assert f"tmpl src {tmpl.src} dst {tmpl.dst}" in block

        # Traffic matching the trap raises ACQUIRE with the Child's reqid.
        reader = XfrmEventReader(netns=a.name)
        try:
            a.run("ping", "-c", "1", "-W", "1", "192.0.2.2", check=False, timeout=30)
            deadline = time.monotonic() + 10
            events: list[XfrmEvent] = []
            while time.monotonic() < deadline and not any(isinstance(e, Acquire) for e in events):
                events.extend(reader.read_available())
                time.sleep(0.05)
        finally:
            reader.close()
        acq = next(e for e in events if isinstance(e, Acquire))
        assert acq.reqid == trap4.reqid and str(acq.dst) == "192.0.2.2"
        assert str(acq.selector.src) == "192.0.2.1/32"

        # Another daemon's policy survives our flush; ours go.
        add_foreign_policy(a)
        report = mgr.reconcile(keep_reqids={trap6.reqid})
        assert (report.removed_policies, report.adopted_policies) == (1, 1)
        assert [p.templates[0].reqid for p in mgr.policies()] == [trap6.reqid]
        assert mgr.flush().removed_policies == 1
        remaining = mgr.policies(ours_only=False)
        assert [p.templates[0].reqid for p in remaining] == [7]
        assert mgr.xfrm_stat()["XfrmOutPolError"] == 0


def test_bypass_socket_and_offload_capabilities(netns_pair: tuple[Netns, Netns]) -> None:
    a, _b = netns_pair
    for family in (socket.AF_INET, socket.AF_INET6):
        with in_netns(a.name):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        with sock:
            enable_esp_in_udp(sock)  # the kernel validates both socket policies
    caps = offload_capabilities("eth0", netns=a.name)
    assert "esp-hw-offload" in caps.features
    assert caps.crypto is False  # veth: "esp-hw-offload: off [fixed]"
    assert caps.summary.startswith("none")


async def test_event_reader_in_asyncio(netns_pair: tuple[Netns, Netns]) -> None:
    """The daemon's way: `async for` over the reader while the loop does other work."""
    a, _b = netns_pair
    with XfrmManager(netns=a.name) as mgr:
        trap, _ = spec_pair(V4_TRANSPORT, mgr.allocate_reqid(), mode="transport", encap=False)
        mgr.install_trap(trap)
        async with XfrmEventReader(netns=a.name) as reader:
            ping = await asyncio.create_subprocess_exec(
                *a.argv(["ping", "-c", "1", "-W", "1", "192.0.2.2"]),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                event = await asyncio.wait_for(anext(aiter(reader)), timeout=10)
            finally:
                await ping.wait()
        assert isinstance(event, Acquire) and event.reqid == trap.reqid
        mgr.flush()


def test_policy_expire_events(make_netns: Callable[..., Netns]) -> None:
    """POLEXPIRE (soft, then hard) for a policy with time limits reaches the reader."""
    ns = make_netns("gwpx")
    reader = XfrmEventReader(netns=ns.name)
    try:
        ns.ip(
            "xfrm",
            "policy",
            "add",
            "src",
            "10.9.0.0/24",
            "dst",
            "10.8.0.0/16",
            "dir",
            "out",
            "limit",
            "time-soft",
            "1",
            "limit",
            "time-hard",
            "2",
            "tmpl",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "reqid",
            "7",
            "mode",
            "tunnel",
        )
        deadline = time.monotonic() + 15
        events: list[XfrmEvent] = []
        while time.monotonic() < deadline and not any(
            isinstance(e, PolicyExpired) and e.hard for e in events
        ):
            events.extend(reader.read_available())
            time.sleep(0.1)
    finally:
        reader.close()
    expired = [e for e in events if isinstance(e, PolicyExpired)]
    assert [e.hard for e in expired] == [False, True]
    pol = expired[-1].policy
    assert (str(pol.selector.src), str(pol.selector.dst)) == ("10.9.0.0/24", "10.8.0.0/16")
    assert pol.direction == 1 and [t.reqid for t in pol.templates] == [7]
    assert ns.ip("xfrm", "policy").stdout.strip() == ""  # the hard limit removed it
