"""A burst of peers against our daemon with the `xfrm` data plane over real kernel ESP (in
the VM when the host kernel has none): the Child SAs that one batch of datagrams
completes go to the kernel in one `install_many` (docs/daemon.md), each still all or
nothing.

One test function (VM time is expensive): our daemon responds to PEERS initiators that
start at once (one engine over UDP, each peer its own identity and inner /32, as
bench/bench_daemon.py's load generator); one peer's outbound policy is already in the
kernel (EEXIST). The daemon reports batched installs; every other Child SA is installed
with its states and policies; the refused one alone left nothing behind and its peer was
told with a Delete; SIGTERM removes every state and policy the daemon installed.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.bench_daemon import inner_address, our_config, peer_connection
from gateway.netns import Netns
from ike.config import EngineSettings
from ike.engine import IkeEngine
from ike.events import ChildSaDeleted, ChildSaEstablished, ChildSaFailed, IkeSaFailed
from tests.support.daemon import Gateway, api
from tests.support.ike_udp import UdpDriver, of_type
from tests.support.kernel import EAST, WEST, policies

PEERS = 12
CLASH = 5  # this peer's outbound policy is in the kernel before it connects


def peers() -> IkeEngine:
    conns = [peer_connection(i, EAST, WEST) for i in range(PEERS)]
    return IkeEngine(conns, EngineSettings(retransmit_timeout=30.0, retransmit_tries=3))


def spis(ns: Netns) -> set[int]:
    text = ns.run("ip", "xfrm", "state").stdout
    return {int(s, 16) for s in re.findall(r"proto esp spi (0x[0-9a-f]+)", text)}


def test_a_burst_of_peers_is_installed_in_batches(
    netns_pair: tuple[Netns, Netns], tmp_path: Path, run_dir: Path
) -> None:
    a, b = netns_pair
    gw = Gateway.start(a, tmp_path, "gw", our_config(run_dir / "gw.sock", dataplane="xfrm"))
    clash = inner_address(CLASH).removesuffix("/32")
    try:
        a.run("ip", "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst", clash, "dir", "out")
        engine = peers()
        with UdpDriver(engine, b.name, EAST) as drv:
            for i in range(PEERS):
                engine.initiate(f"c{i}", None, drv.now())

            def done(evs: list[object]) -> bool:
                ended = of_type(evs, ChildSaFailed) + of_type(evs, IkeSaFailed)
                return len(of_type(evs, ChildSaEstablished)) + len(ended) >= PEERS and bool(
                    of_type(evs, ChildSaDeleted)
                )

            assert drv.run_until(done, 240), drv.events
        established = {e.ike_sa: e for e in of_type(drv.events, ChildSaEstablished)}
        assert len(established) == PEERS  # IKE_AUTH succeeded for all, as the peers saw it
        (deleted,) = of_type(drv.events, ChildSaDeleted)  # the refused one, by the daemon
        refused = established[deleted.ike_sa]
        assert refused.connection == f"c{CLASH}"

        stats = api(gw.socket, "stats")
        assert stats["dataplane"] == "xfrm"
        assert stats["install_batches"] >= 1, stats  # at least one batch of several
        assert stats["install_failures"] == 1, stats
        children = [c for s in gw.sas() for c in s["children"]]
        assert len(children) == PEERS - 1 and {c["state"] for c in children} == {"INSTALLED"}
        # the kernel holds exactly the installed ones: both states of each, three
        # policies each, plus the clashing policy; nothing of the refused Child
        kernel = spis(a)
        assert kernel == {int(c["spi_in"], 16) for c in children} | {
            int(c["spi_out"], 16) for c in children
        }
        assert refused.spi_in not in kernel and refused.spi_out not in kernel
        assert policies(a) == 3 * (PEERS - 1) + 1
    finally:
        assert gw.stop() == 0, gw.log_text()
    assert spis(a) == set() and policies(a) == 1  # only the policy the test added
