"""A real Prometheus server scraping a real running daemon (`gateway run`, data plane
`none`) that has an IKE SA and a Child SA with a second daemon: the contract series carry
the daemon's actual SAs. Everything runs inside the test's namespaces (Prometheus and the
exporter on the namespace's own loopback); processes are ended by pid via the namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from gateway.netns import Netns
from tests.support.daemon import ns_get, wait_for
from tests.support.pair import start_pair

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
METRICS = "127.0.0.1:9810"
PROM_WEB = "127.0.0.1:9090"


def query(ns: Netns, promql: str) -> list[dict[str, Any]]:
    body = ns_get(
        ns, f"http://{PROM_WEB}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    )
    if not body:
        return []
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


@pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None, reason="prometheus missing: run scripts/setup.sh"
)
def test_prometheus_scrapes_a_running_daemon(
    netns_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = netns_pair
    west, _ = start_pair(a, b, tmp_path, metrics=METRICS)
    (sa,) = west.installed("east")
    (child,) = sa["children"]

    # the exporter itself: promtool finds nothing to complain about
    body = wait_for("the daemon's /metrics", lambda: ns_get(a, f"http://{METRICS}/metrics"))
    assert PROMTOOL is not None and PROMETHEUS is not None
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=body.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint
    assert "psk" not in body.lower() and "lab-secret" not in body

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: gateway\n    static_configs:\n"
        f"      - targets: ['{METRICS}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = a.popen(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={PROM_WEB}",
        "--log.level=warn",
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:

        def series(promql: str) -> list[dict[str, Any]]:
            return wait_for(promql, lambda: query(a, promql), timeout=60)  # type: ignore[no-any-return]

        series('up{job="gateway"} == 1')
        (ike,) = series('ipsec_ike_sas{state="ESTABLISHED"}')
        assert float(ike["value"][1]) == 1
        (info,) = series('ipsec_child_sa_info{connection="east",child="net"}')
        labels = info["metric"]
        assert (labels["spi_in"], labels["spi_out"]) == (child["spi_in"], child["spi_out"])
        assert labels["esp_proposal"] == child["esp_proposal"]
        assert (labels["mode"], labels["offload"]) == (child["mode"], child["offload"])
        for direction in ("in", "out"):
            assert series(
                f'ipsec_child_sa_bytes_total{{connection="east",child="net",'
                f'direction="{direction}"}}'
            )
            assert series(
                f'ipsec_child_sa_packets_total{{connection="east",child="net",'
                f'direction="{direction}"}}'
            )
        (count,) = series("ipsec_ike_handshake_duration_seconds_count")
        assert float(count["value"][1]) >= 1  # west initiated the IKE SA
        assert series("ipsec_ike_handshake_duration_seconds_bucket")
        for name in (
            "ipsec_build_info",
            "ipsec_source_up",
            "ipsec_child_sa_rekeys_total",
            "ipsec_dpd_failures_total",
            "ipsec_auth_failures_total",
        ):
            assert series(name), name
    finally:
        a.stop(prom, timeout=15)
        log.close()
    assert west.stop() == 0
