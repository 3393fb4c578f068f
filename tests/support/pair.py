"""Two real daemons (`gateway run`, data plane `none`) in a test's namespace pair, west
initiating one IKE SA + Child SA "east.net" to east: what the metrics and console host
tests observe (tests/host/test_prometheus_daemon.py, tests/host/test_ui_daemon.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import Gateway, gateway_config

TS = {"local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"]}


def west_config(tmp_path: Path, metrics: str = "off") -> str:
    """The initiator's config (connection "east", child "net", start_action start)."""
    return gateway_config(
        socket=tmp_path / "west.sock",
        listen=["192.0.2.1"],
        metrics=metrics,
        conns=[
            {
                "name": "east",
                "local": "192.0.2.1",
                "remote": "192.0.2.2",
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "start_action": "start",
                **TS,
            }
        ],
    )


def start_pair(
    west_ns: Netns, east_ns: Netns, tmp_path: Path, metrics: str = "off"
) -> tuple[Gateway, Gateway]:
    """Start east (responder) then west; return (west, east) once east.net is INSTALLED."""
    east = Gateway.start(
        east_ns,
        tmp_path,
        "east",
        gateway_config(
            socket=tmp_path / "east.sock",
            listen=["192.0.2.2"],
            conns=[
                {
                    "name": "west",
                    "local": "192.0.2.2",
                    "remote": "192.0.2.1",
                    "local_id": "gw-east",
                    "remote_id": "gw-west",
                    "local_ts": TS["remote_ts"],
                    "remote_ts": TS["local_ts"],
                }
            ],
        ),
    )
    west = Gateway.start(west_ns, tmp_path, "west", west_config(tmp_path, metrics))
    west.installed("east")
    return west, east
