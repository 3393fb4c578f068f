"""`[gateway] metrics_aggregate = "connection"`: a running daemon exports its traffic per
connection (ipsec_connection_*) instead of per connection+child."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import Gateway, wait_for
from tests.support.pair import start_pair, west_config

METRICS = "127.0.0.1:9811"
GET = (
    "import sys, urllib.request\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=5).read())\n"
)


def test_daemon_aggregates_metrics_per_connection(
    netns_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = netns_pair
    west, _east = start_pair(a, b, tmp_path)
    west.stop()
    config = west_config(tmp_path, metrics=METRICS).replace(
        "[gateway]\n", '[gateway]\nmetrics_aggregate = "connection"\n', 1
    )
    assert 'metrics_aggregate = "connection"' in config
    west = Gateway.start(a, tmp_path, "west", config)
    west.installed("east")

    def scrape() -> str:
        proc = a.run(sys.executable, "-c", GET, f"http://{METRICS}/metrics", check=False)
        return proc.stdout if proc.returncode == 0 else ""

    text = wait_for("the exporter", scrape)
    assert 'ipsec_connection_bytes_total{connection="east",direction="in"}' in text
    assert "ipsec_child_sa_bytes_total" not in text
    assert "ipsec_child_sa_info" not in text
