"""The XFRM manager's trap bookkeeping without a kernel (a channel that records the
messages and accepts them all): a Child SA under its trap's reqid shares the trap's
identical out policy (never added or deleted with the SA), one with other tunnel
addresses replaces it with UPDPOLICY and puts it back when it goes, rekeys leave it
alone, and remove_trap() finally deletes it."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from gateway.dataplane.base import TrapSpec
from gateway.dataplane.xfrm import trap_sa_spec
from gateway.xfrm import XfrmManager
from gateway.xfrm import netlink as nl

TRAP = TrapSpec(
    "east", "net", "192.0.2.1", "192.0.2.2", ("10.1.0.0/24",), ("10.2.0.0/24",), "tunnel"
)


class RecordingChannel:
    netns = None

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self._seq = 0

    def reserve_seqs(self, count: int) -> int:
        self._seq += count
        return self._seq - count + 1

    def send_batch(self, messages: list[bytes]) -> list[Any]:
        for m in messages:
            # nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; then the payload
            self.sent.append((int.from_bytes(m[4:6], "little"), m[16:]))
        return []

    def take(self) -> list[tuple[int, bytes]]:
        out, self.sent = self.sent, []
        return out


def kinds(sent: list[tuple[int, bytes]]) -> list[str]:
    return [nl.MSG_NAMES[t] for t, _ in sent]


def test_child_sas_share_the_traps_out_policy() -> None:
    channel = RecordingChannel()
    mgr = XfrmManager(channel)  # type: ignore[arg-type]
    reqid = mgr.allocate_reqid()
    trap = trap_sa_spec(TRAP, reqid)
    mgr.install_trap(trap)
    (out_policy,) = channel.take()
    assert kinds([out_policy]) == ["NEWPOLICY"]

    # a Child SA under the trap's reqid: states and in/fwd policies, not the out policy
    sa = dataclasses.replace(trap, spi_in=0x1001, spi_out=0x1002)
    installed = mgr.install(sa)
    assert kinds(channel.take()) == ["NEWSA", "NEWSA", "NEWPOLICY", "NEWPOLICY"]
    # a rekey moves the in/fwd policies, the shared out policy is left as it is
    new = dataclasses.replace(sa, spi_in=0x2001, spi_out=0x2002)
    mgr.replace(installed, new, keep_old_inbound=True)
    sent = channel.take()
    assert kinds(sent) == ["NEWSA", "NEWSA", "UPDPOLICY", "UPDPOLICY", "DELSA"]
    assert out_policy[1] not in [body for _, body in sent]
    # the SA goes: its states and in/fwd policies; the trap stays underneath
    mgr.delete(new)
    assert kinds(channel.take()) == ["DELPOLICY", "DELPOLICY", "DELSA", "DELSA"]

    # other tunnel addresses (NAT-T, MOBIKE): the SA's out policy replaces the trap's
    # and the trap's comes back when the SA goes
    moved = dataclasses.replace(sa, remote=ipaddress.ip_address("198.51.100.7"))
    mgr.install(moved)
    sent = channel.take()
    assert kinds(sent) == ["NEWSA", "NEWSA", "NEWPOLICY", "NEWPOLICY", "UPDPOLICY"]
    mgr.delete(moved)
    sent = channel.take()
    assert ("UPDPOLICY", out_policy[1]) in [(nl.MSG_NAMES[t], b) for t, b in sent]

    # remove_trap deletes the out policy; from then on the SA would own all of its own
    mgr.remove_trap(trap)
    assert kinds(channel.take()) == ["DELPOLICY"]
    mgr.install(sa)
    assert kinds(channel.take()) == ["NEWSA", "NEWSA"] + ["NEWPOLICY"] * 3
