"""`[gateway] workers = 2` with the `xfrm` data plane over real kernel ESP (in the VM when
the host kernel has none): each worker installs its own Child SAs, with inbound SPIs and
reqids from its own share, so the workers never collide in the kernel and a restarted
worker's reconcile removes exactly what its dead predecessor left.

One test function (VM time is expensive): two connections whose owners (crc32 of the
name) are worker 0 and worker 1, started by their owners against our single-process
daemon; ping passes through both; worker 1 is SIGKILLed: its states and policies go when
its successor starts, worker 0's stay and still carry traffic; SIGTERM leaves nothing.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from gateway.netns import Netns
from gateway.workers.partition import connection_owner, reqid_range
from tests.support.daemon import Gateway, api, gateway_config, wait_for
from tests.support.kernel import EAST, WEST, ping, policies, protected_nets

# crc32("alpha") % 2 == 0, crc32("beta") % 2 == 1: one connection per worker
CONNECTIONS = {"alpha": "0", "beta": "1"}


def config(sock: Path, me: str, peer: str, mine: str, theirs: str, workers: int) -> str:
    return gateway_config(
        socket=sock,
        listen=[me],
        dataplane="xfrm",
        extra=f"workers = {workers}",
        conns=[
            {
                "name": name,
                "local": me,
                "remote": peer,
                "local_id": f"{name}-{me}",  # own IDs: the responder picks by them
                "remote_id": f"{name}-{peer}",
                "local_ts": [f"{mine}.{x}.0/24"],
                "remote_ts": [f"{theirs}.{x}.0/24"],
                "start_action": "start" if workers > 1 else "none",
            }
            for name, x in CONNECTIONS.items()
        ],
    )


def kernel_states(ns: Netns) -> dict[int, int]:
    """SPI -> reqid of every ESP state in the namespace."""
    text = ns.run("ip", "xfrm", "state").stdout
    return {
        int(spi, 16): int(reqid)
        for spi, reqid in re.findall(r"proto esp spi (0x[0-9a-f]+) reqid (\d+)", text)
    }


def child(gw: Gateway, connection: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (sa,) = gw.installed(connection)
    return sa, sa["children"][0]


def test_workers_partition_the_kernel(
    netns_pair: tuple[Netns, Netns],
    tmp_path: Path,
    run_dir: Path,  # noqa: F811
) -> None:
    assert [connection_owner(n, 2) for n in CONNECTIONS] == [0, 1]
    started = time.monotonic()

    def phase(what: str) -> None:  # where the (emulated) time goes: `pytest -rP` shows it
        print(f"{time.monotonic() - started:7.1f} s  {what}", flush=True)

    a, b = netns_pair
    protected_nets(a, b)
    # Both daemons start side by side (east first: west's start actions find it
    # listening, or retransmit). West's workers are forked from a pre-imported zygote
    # (gateway/workers/zygote.py): no interpreter start per worker under the emulation.
    east = Gateway.launch(
        b, tmp_path, "east", config(run_dir / "e.sock", EAST, WEST, "10.2", "10.1", 1)
    )
    west = Gateway.launch(
        a, tmp_path, "west", config(run_dir / "w.sock", WEST, EAST, "10.1", "10.2", 2)
    )
    try:
        east.ready()
        phase("east serving")
        west.ready()
        phase("west serving (supervisor, zygote, 2 workers)")
        # each connection started by its owner, installed with that worker's SPIs/reqids
        (alpha, alpha_c), (beta, beta_c) = child(west, "alpha"), child(west, "beta")
        assert (alpha["worker"], beta["worker"]) == (0, 1)
        east.installed("alpha")
        east.installed("beta")
        phase("both Child SAs installed")
        states = kernel_states(a)
        assert len(states) == 4 and policies(a) == 6
        for sa, c in ((alpha, alpha_c), (beta, beta_c)):
            spi_in, spi_out = int(c["spi_in"], 16), int(c["spi_out"], 16)
            assert spi_in % 2 == sa["worker"]
            share = reqid_range(sa["worker"], 2)
            assert states[spi_in] in share and states[spi_out] in share
        ping(a, "10.1.0.1", "10.2.0.1")
        ping(a, "10.1.1.1", "10.2.1.1")
        phase("pings through both")
        # one handshake initiated by each worker: both in the supervisor's histogram
        assert api(west.socket, "stats")["handshake_durations"]["counts"][-1] == 2

        # worker 1 dies: its successor's start-up reconcile removes beta's old objects
        # (its reqid share only); alpha's, in worker 0's share, are untouched
        victim = api(west.socket, "stats")["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "worker 1 restarted",
            lambda: (
                (w := api(west.socket, "stats")["workers"][1])["running"] and w["pid"] != victim
            ),
            timeout=120,
        )
        phase("worker 1 restarted")
        old_beta = {int(beta_c["spi_in"], 16), int(beta_c["spi_out"], 16)}
        wait_for("beta's old states removed", lambda: not old_beta & set(kernel_states(a)))
        states = kernel_states(a)
        assert int(alpha_c["spi_in"], 16) in states and int(alpha_c["spi_out"], 16) in states
        assert all(
            reqid in reqid_range(0, 2) or reqid in reqid_range(1, 2) for reqid in states.values()
        )
        ping(a, "10.1.0.1", "10.2.0.1")
        assert "event=worker-died worker=1" in west.log_text()
        phase("reconciled, alpha still carries traffic")
    finally:
        codes = (west.stop(120), east.stop(120))
        phase("both stopped")
    assert codes == (0, 0), west.log_text()
    assert kernel_states(a) == {} and policies(a) == 0
    wait_for("no process left", lambda: a.pids() == [], timeout=30)
