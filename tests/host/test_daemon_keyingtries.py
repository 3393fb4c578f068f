"""keyingtries between two of our daemons (`gateway run`, data plane `none`, real engine)
in two namespaces: west has start_action = start and keyingtries = 0 and starts while
east is not running; its attempts time out (short retransmits) and are retried with
backoff; once east is started the SA comes up without anyone touching west."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import PSK, Gateway, ctl, gateway_config, wait_for


def config(sock: Path, me: str, peer: str, start: bool) -> str:
    ends = ["10.1.0.0/24", "10.2.0.0/24"] if start else ["10.2.0.0/24", "10.1.0.0/24"]
    return gateway_config(
        socket=sock,
        listen=[me],
        extra='retransmit_timeout = "0.5s"\nretransmit_tries = 1',
        conns=[
            {
                "name": "peer",
                "local": me,
                "remote": peer,
                "local_id": "gw-west" if start else "gw-east",
                "remote_id": "gw-east" if start else "gw-west",
                "local_ts": [ends[0]],
                "remote_ts": [ends[1]],
                "start_action": "start" if start else "none",
                "conn_extra": "keyingtries = 0" if start else "",
            }
        ],
    )


def test_start_action_retries_until_the_peer_is_up(
    netns_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = netns_pair
    west = Gateway.start(
        a, tmp_path, "west", config(tmp_path / "w.sock", "192.0.2.1", "192.0.2.2", True)
    )
    east: Gateway | None = None
    try:
        # nobody answers: the first attempts fail (timeout) and are retried
        wait_for(
            "west's third attempt",
            lambda: "event=ike-retry connection=peer child=net attempt=3" in west.log_text(),
        )
        assert west.sas() == [] or all(s["state"] == "CONNECTING" for s in west.sas())
        east = Gateway.start(
            b, tmp_path, "east", config(tmp_path / "e.sock", "192.0.2.2", "192.0.2.1", False)
        )
        (sa,) = west.installed("peer")  # a later retry finds east: no operator action
        assert sa["initiator"] is True and sa["children"][0]["name"] == "net"
        (theirs,) = east.installed("peer")
        assert (sa["spi_i"], sa["spi_r"]) == (theirs["spi_i"], theirs["spi_r"])
        log = west.log_text()
        failed = re.findall(r"event=ike-failed connection=peer .*reason=(\S+)", log)
        # attempts 1 and 2 failed before attempt 3 began; attempt 3 itself may reach east
        assert len(failed) >= 2 and "event=ike-retry-exhausted" not in log
        # up: no retry is pending any more; terminate has only the SA to delete
        assert "1 IKE SA(s) deleted" in ctl(west.socket, "terminate", "peer").stdout
        assert west.stop() == 0
        assert east.stop() == 0
        for gw in (west, east):
            text = gw.log_text()
            assert PSK not in text and "Traceback" not in text
    finally:
        west.stop()
        if east is not None:
            east.stop()
