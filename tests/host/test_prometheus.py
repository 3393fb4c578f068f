"""The exporter against the real Prometheus tools (Debian package `prometheus`):
`promtool check metrics` on a scrape, the shipped alerting rules through `promtool check
rules` and their unit tests (`promtool test rules`), and a Prometheus server scraping the
exporter, with the rules loaded, whose HTTP API must then answer queries for every
contract series and evaluate every rule without error.

The server listens on 127.0.0.1 only, keeps its data in a temp dir and is ended by pid."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import (
    DurationHistogram,
    Exporter,
    MetricsSnapshot,
    XdpCounter,
    start_exporter,
)
from tests.support.observability import ike_sa, synthetic_ike_sas

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "ipsec-alerts.yml"
RULE_TESTS = RULES.with_name("ipsec-alerts.test.yml")


class TickingSource:
    """Counters advance at every scrape, like a gateway under traffic."""

    def __init__(self) -> None:
        self.tick = 0
        self.lock = threading.Lock()
        self.hist = DurationHistogram()
        for seconds in (0.02, 0.04, 0.3):
            self.hist.observe(seconds)

    def metrics_snapshot(self) -> MetricsSnapshot:
        with self.lock:
            self.tick += 1
            tick = self.tick
        sas = synthetic_ike_sas(4, tick=tick)
        sas.append(ike_sa("roadwarrior", 50, [], state="CONNECTING"))
        return MetricsSnapshot(
            ike_sas=sas,
            xdp=[
                XdpCounter("eth0", "pass", "esp", 10 * tick),
                XdpCounter("eth0", "drop", "bad-spi", tick),
            ],
            mss_clamped={"eth0": 2 * tick},
            xfrm_errors={"XfrmInNoStates": 1},
            handshake_durations=self.hist.snapshot(),
            rekeys=tick,
            dpd_failures=1,
            auth_failures=2,
            start_time=time.time() - 10,
        )


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    with start_exporter(TickingSource(), "127.0.0.1:0") as exp:
        yield exp


@pytest.fixture
def aggregated_exporter() -> Iterator[Exporter]:
    with start_exporter(TickingSource(), "127.0.0.1:0", aggregate_per_connection=True) as exp:
        yield exp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run scripts/setup.sh")
def test_promtool_check_metrics_is_clean(exporter: Exporter, aggregated_exporter: Exporter) -> None:
    assert PROMTOOL is not None
    for exp in (exporter, aggregated_exporter):
        with urllib.request.urlopen(exp.url, timeout=5) as resp:
            body = resp.read()
        done = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == b"" and done.stderr == b""  # not even lint warnings
    assert b"ipsec_connection_bytes_total" in body


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run scripts/setup.sh")
def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    """deploy/prometheus/ipsec-alerts.yml: tunnel down, configured Child SA missing,
    auth/DPD failures rising, XDP drops rising, replay/integrity errors, slots exhausted,
    offload fallbacks; each one fires in ipsec-alerts.test.yml where it should."""
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert b"SUCCESS: 10 rules found" in checked.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, timeout=60, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert b"SUCCESS" in tested.stdout


@pytest.fixture
def prometheus(tmp_path: Path, exporter: Exporter) -> Iterator[str]:
    assert PROMETHEUS is not None, "prometheus missing: run scripts/setup.sh"
    host, port = exporter.address
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: ipsec\n    static_configs:\n"
        f"      - targets: ['{host}:{port}']\n"
    )
    web = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={web}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{web}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "prometheus did not start: " + (tmp_path / "prometheus.log").read_text()[-2000:]
                )
            time.sleep(0.3)
        yield f"http://{web}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    reply = get_json(url)
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def wait_for(base: str, promql: str, timeout: float = 45) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(base, promql)
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"no result for {promql!r} within {timeout} s")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: run scripts/setup.sh")
def test_prometheus_scrapes_every_contract_series(prometheus: str) -> None:
    up = wait_for(prometheus, 'up{job="ipsec"} == 1')
    assert up
    ike = {
        r["metric"]["state"]: float(r["value"][1]) for r in wait_for(prometheus, "ipsec_ike_sas")
    }
    assert ike == {"CONNECTING": 1, "ESTABLISHED": 2, "REKEYING": 0, "DELETING": 0}
    for direction in ("in", "out"):
        got = wait_for(
            prometheus,
            "ipsec_child_sa_bytes_total{connection='conn-1',"
            f"child='net-0',direction='{direction}'}}",
        )
        assert len(got) == 1 and float(got[0]["value"][1]) > 0
        assert wait_for(prometheus, f"ipsec_child_sa_packets_total{{direction='{direction}'}}")
    info = wait_for(prometheus, "ipsec_child_sa_info")
    assert {frozenset(r["metric"]) for r in info} == {
        frozenset(
            {
                "__name__",
                "instance",
                "job",
                "connection",
                "child",
                "spi_in",
                "spi_out",
                "esp_proposal",
                "offload",
                "mode",
            }
        )
    }
    assert len(info) == 4
    p50 = wait_for(
        prometheus, "histogram_quantile(0.5, ipsec_ike_handshake_duration_seconds_bucket)"
    )
    assert 0.025 <= float(p50[0]["value"][1]) <= 0.05
    drops = wait_for(prometheus, "ipsec_xdp_packets_total{action='drop',reason='bad-spi'}")
    assert drops[0]["metric"]["interface"] == "eth0"
    assert wait_for(prometheus, "ipsec_mss_clamped_total{interface='eth0'}")
    for name in (
        "ipsec_child_sa_rekeys_total",
        "ipsec_dpd_failures_total",
        "ipsec_auth_failures_total",
        "ipsec_xfrm_errors_total",
        "ipsec_build_info",
    ):
        assert wait_for(prometheus, name), name
    # counters grow between scrapes: Prometheus computes a positive rate
    rate = wait_for(
        prometheus,
        "rate(ipsec_child_sa_bytes_total{connection='conn-0',"
        "child='net-0',direction='in'}[5s]) > 0",
    )
    assert float(rate[0]["value"][1]) > 0
    # the shipped alerting rules are loaded and every one evaluates without error
    deadline = time.monotonic() + 30
    while True:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups if g["name"] == "ipsec-gateway" for r in g["rules"]]
        if len(rules) == 10 and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
