"""Rekeying between two of our daemons (data plane `none`), observed through `gateway ctl`:
on demand (`ctl rekey conn.child`, `ctl rekey conn`) and by lifetime (short rekey_time):
new SPIs on both sides, still one installed Child SA each, paired the same way, the IKE SA
handle kept, and the rekey counters and events reported."""

from __future__ import annotations

from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import (
    Gateway,
    ctl,
    ctl_json,
    gateway_config,
    recorded_events,
    wait_for,
)


def config(sock: Path, me: str, peer: str, start: bool, child_rekey: str = "1h") -> str:
    nets = {"192.0.2.1": "10.1.0.0/24", "192.0.2.2": "10.2.0.0/24"}
    return gateway_config(
        socket=sock,
        listen=[me],
        conns=[
            {
                "name": "peer",
                "local": me,
                "remote": peer,
                "local_id": f"gw-{me}",
                "remote_id": f"gw-{peer}",
                "local_ts": [nets[me]],
                "remote_ts": [nets[peer]],
                "start_action": "start" if start else "none",
                "child_extra": f'rekey_time = "{child_rekey}"\nrand_time = "1s"',
            },
        ],
    )


def one_child(gw: Gateway) -> tuple[dict, dict]:  # type: ignore[type-arg]
    (sa,) = gw.installed("peer")
    (child,) = sa["children"]
    return sa, child


def paired(west: Gateway, east: Gateway, not_spi: str | None = None) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Wait until both sides show one Child SA with mirrored SPIs (other than `not_spi`)."""

    def probe() -> tuple[dict, dict] | None:  # type: ignore[type-arg]
        (ws, wc), (es, ec) = one_child(west), one_child(east)
        if (wc["spi_in"], wc["spi_out"]) != (ec["spi_out"], ec["spi_in"]):
            return None
        if wc["spi_in"] == not_spi:
            return None
        return ws, es

    return wait_for("paired Child SAs", probe)  # type: ignore[no-any-return]


def test_rekey_on_demand_and_by_lifetime(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    east = Gateway.start(
        b, tmp_path, "east", config(tmp_path / "e.sock", "192.0.2.2", "192.0.2.1", False)
    )
    west = Gateway.start(
        a, tmp_path, "west", config(tmp_path / "w.sock", "192.0.2.1", "192.0.2.2", True)
    )
    with recorded_events(west.socket) as events:  # subscribed before the first rekey
        try:
            ws, _ = paired(west, east)
            before = ws["children"][0]["spi_in"]

            # Child rekey on demand
            out = ctl(west.socket, "rekey", "peer.net").stdout
            assert "1 Child SA(s) rekeyed" in out
            ws, es = paired(west, east, not_spi=before)
            assert ws["ike_sa"] == 1 and ws["spi_i"] == es["spi_i"]

            # IKE rekey on demand: new IKE SPIs, the Child SA stays
            child_spi = ws["children"][0]["spi_in"]
            ctl(west.socket, "rekey", "peer")
            ws2, es2 = paired(west, east)
            assert ws2["spi_i"] != ws["spi_i"] and ws2["spi_i"] == es2["spi_i"]
            assert ws2["children"][0]["spi_in"] == child_spi

            stats = ctl_json(west.socket, "stats")
            assert stats["rekeys"] >= 1 and stats["handshakes"] == 1
            bad = ctl(west.socket, "rekey", "nowhere", check=False)
            assert bad.returncode == 1 and "unknown-connection" in bad.stderr
        finally:
            west.stop()
            east.stop()
    types = [e["type"] for e in events]
    assert "child-rekeyed" in types and "ike-rekeyed" in types


def test_child_rekeys_by_lifetime(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    east = Gateway.start(
        b, tmp_path, "east", config(tmp_path / "e.sock", "192.0.2.2", "192.0.2.1", False, "6s")
    )
    west = Gateway.start(
        a, tmp_path, "west", config(tmp_path / "w.sock", "192.0.2.1", "192.0.2.2", True, "6s")
    )
    ws, _ = paired(west, east)
    first = ws["children"][0]["spi_in"]
    ws, _ = paired(west, east, not_spi=first)  # rekeyed within ~5-6 s, by either side
    second = ws["children"][0]["spi_in"]
    ws, _ = paired(west, east, not_spi=second)
    assert ctl_json(west.socket, "stats")["rekeys"] + ctl_json(east.socket, "stats")["rekeys"] >= 2
    assert west.stop() == 0 and east.stop() == 0
