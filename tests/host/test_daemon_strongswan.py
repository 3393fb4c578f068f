"""Our daemon (`gateway run`, data plane `none`) against strongSwan (charon, kernel-libipsec)
in namespaces: we initiate (start_action) and strongSwan agrees on SPIs, algorithms and
selectors; we terminate with `gateway ctl` and strongSwan forgets the SA; strongSwan
initiates and terminates and our list-sas follows; an idle SA gets DPD checks that charon
answers; killing charon is detected by DPD (event stream: dpd-failed) and our SA is
removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import REPO, Gateway, ctl, gateway_config, wait_for
from tests.support.strongswan import (
    OURS,
    SWAN_CONF,
    SWAN_ESP,
    SWAN_IKE,
    SWAN_PSK,
    THEIRS,
    assert_same_view,
    charon,
    swan_sa,
)


def our_config(sock: Path) -> str:
    return gateway_config(
        socket=sock,
        listen=[OURS],
        extra='retransmit_timeout = "0.5s"\nretransmit_tries = 2',
        conns=[
            {
                "name": "swan",
                "local": OURS,
                "remote": THEIRS,
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "local_ts": ["10.1.0.0/16"],
                "remote_ts": ["10.2.0.0/16"],
                "ike": [SWAN_IKE],
                "esp": [SWAN_ESP],
                "psk": SWAN_PSK,
                "start_action": "start",
                "dpd_delay": "1s",
            },
        ],
    )


def test_daemon_and_strongswan(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    with charon(b, SWAN_CONF) as sw:
        gw = Gateway.start(a, tmp_path, "west", our_config(tmp_path / "west.sock"))
        events = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "ctl",
                "--socket",
                str(gw.socket),
                "events",
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            # 1. we initiate (start_action = start)
            (ours,) = gw.installed("swan")
            theirs = wait_for("strongSwan's SA", lambda: swan_sa(sw))
            assert ours["initiator"] is True
            assert_same_view(ours, theirs)

            # 2. we terminate; strongSwan forgets it
            ctl(gw.socket, "terminate", "swan")
            wait_for("strongSwan SA gone", lambda: sw.list_sas() == [])
            assert gw.sas() == []

            # 3. strongSwan initiates, we answer
            sw.initiate("net")
            (ours,) = gw.installed("swan")
            assert ours["initiator"] is False
            assert_same_view(ours, swan_sa(sw))  # type: ignore[arg-type]

            # 4. strongSwan terminates; our SA goes with it
            sw.terminate_ike("gw")
            wait_for("our SA gone", lambda: gw.sas() == [])

            # 5. DPD: charon is killed while an SA is up; we notice and clean up
            ctl(gw.socket, "initiate", "swan")
            gw.installed("swan")

            def probes() -> int:
                stats = json.loads(ctl(gw.socket, "stats", "--json").stdout)
                return int(stats["engine"]["dpd_probes"])

            # idle for dpd_delay: our engine checks, charon answers, the SA stays
            sent = probes()
            wait_for("an idle-time DPD check", lambda: probes() >= sent + 2, timeout=10)
            gw.installed("swan")
            sw.kill()  # SIGKILL: no goodbye (SIGTERM would make charon send a Delete)
            wait_for("dead peer removed", lambda: gw.sas() == [], timeout=30)
            stats = json.loads(ctl(gw.socket, "stats", "--json").stdout)
            assert stats["dpd_failures"] == 1
        finally:
            gw.stop()
            events.terminate()
            out = events.communicate(timeout=10)[0]
        types = [json.loads(line)["type"] for line in out.splitlines()]
        # (the stream, a process of its own, may start late on a busy machine: after the
        # first SAs came up; the last one, whose end DPD found, is always in it)
        assert types.count("ike-established") >= 1 and types.count("child-established") >= 1
        assert types[-3:] == ["child-deleted", "dpd-failed", "ike-deleted"]
        assert SWAN_PSK not in gw.log_text()
