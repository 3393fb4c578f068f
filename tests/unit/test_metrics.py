"""The Prometheus exporter's exposition: contract series, counter semantics across
rekeys, the fast text renderer against prometheus_client's, bad input, the HTTP server."""

from __future__ import annotations

import gzip
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    DurationHistogram,
    MetricsError,
    MetricsSnapshot,
    XdpCounter,
    make_registry,
    parse_listen,
    render_text,
    snapshot_from,
    start_exporter,
)
from tests.support.observability import child_sa, ike_sa, synthetic_ike_sas


class FakeSource:
    def __init__(self, snap: MetricsSnapshot) -> None:
        self.snap = snap
        self.error: Exception | None = None

    def metrics_snapshot(self) -> MetricsSnapshot:
        if self.error is not None:
            raise self.error
        return self.snap


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = render_text(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def types(registry: CollectorRegistry) -> dict[str, str]:
    text = render_text(registry).decode()
    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry)[(name, frozenset(labels.items()))]


def full_snapshot() -> MetricsSnapshot:
    hist = DurationHistogram()
    for seconds in (0.004, 0.03, 0.03, 2.0, 45.0):
        hist.observe(seconds)
    sas = synthetic_ike_sas(4, tick=10)
    sas.append(ike_sa("roadwarrior", 99, [], state="CONNECTING"))
    return MetricsSnapshot(
        ike_sas=sas,
        xdp=[XdpCounter("eth0", "pass", "esp", 1000), XdpCounter("eth0", "drop", "bad-spi", 7)],
        mss_clamped={"eth1": 12},
        xfrm_errors={"XfrmInNoStates": 3, "XfrmInStateProtoError": 0},
        handshake_durations=hist.snapshot(),
        rekeys=5,
        ike_rekeys=1,
        dpd_failures=2,
        auth_failures=4,
        start_time=1_700_000_000.0,
    )


def test_contract_series_have_their_types_and_labels() -> None:
    reg = make_registry(FakeSource(full_snapshot()))
    t = types(reg)
    assert t["ipsec_ike_sas"] == "gauge"
    assert t["ipsec_child_sa_bytes"] == "counter"
    assert t["ipsec_child_sa_packets"] == "counter"
    assert t["ipsec_child_sa_info"] == "gauge"
    assert t["ipsec_ike_handshake_duration_seconds"] == "histogram"
    assert t["ipsec_xdp_packets"] == "counter"
    assert t["ipsec_mss_clamped"] == "counter"
    for name in (
        "ipsec_child_sa_rekeys",
        "ipsec_ike_sa_rekeys",
        "ipsec_dpd_failures",
        "ipsec_auth_failures",
        "ipsec_xfrm_errors",
    ):
        assert t[name] == "counter", name
    assert t["ipsec_build_info"] == "gauge"

    assert value(reg, "ipsec_ike_sas", state="ESTABLISHED") == 2
    assert value(reg, "ipsec_ike_sas", state="CONNECTING") == 1
    assert value(reg, "ipsec_ike_sas", state="DELETING") == 0  # every state always present
    # child_sa(index=1, tick=10): rate 1100 bytes/tick in, half of it out
    assert (
        value(reg, "ipsec_child_sa_bytes_total", connection="conn-0", child="net-1", direction="in")
        == 11_000
    )
    assert (
        value(
            reg, "ipsec_child_sa_bytes_total", connection="conn-0", child="net-1", direction="out"
        )
        == 5_500
    )
    assert (
        value(
            reg, "ipsec_child_sa_packets_total", connection="conn-0", child="net-1", direction="in"
        )
        == 11
    )
    assert (
        value(
            reg,
            "ipsec_child_sa_info",
            connection="conn-1",
            child="net-0",
            spi_in="c0000002",
            spi_out="d0000002",
            esp_proposal="AES_GCM_16_256",
            offload="none",
            mode="tunnel",
        )
        == 1
    )
    assert (
        value(reg, "ipsec_xdp_packets_total", interface="eth0", action="drop", reason="bad-spi")
        == 7
    )
    assert value(reg, "ipsec_mss_clamped_total", interface="eth1") == 12
    assert value(reg, "ipsec_xfrm_errors_total", error="XfrmInNoStates") == 3
    assert value(reg, "ipsec_child_sa_rekeys_total") == 5
    assert value(reg, "ipsec_dpd_failures_total") == 2
    assert value(reg, "ipsec_auth_failures_total") == 4
    assert value(reg, "ipsec_start_time_seconds") == 1_700_000_000.0
    assert value(reg, "ipsec_source_up") == 1


def test_no_spi_labels_on_traffic_counters() -> None:
    text = render_text(make_registry(FakeSource(full_snapshot()))).decode()
    for line in text.splitlines():
        if line.startswith(("ipsec_child_sa_bytes", "ipsec_child_sa_packets")):
            assert "spi" not in line, line


def test_handshake_histogram_buckets_are_cumulative() -> None:
    reg = make_registry(FakeSource(full_snapshot()))
    h = "ipsec_ike_handshake_duration_seconds"
    assert value(reg, h + "_bucket", le="0.005") == 1
    assert value(reg, h + "_bucket", le="0.05") == 3
    assert value(reg, h + "_bucket", le="2.5") == 4
    assert value(reg, h + "_bucket", le="30.0") == 4
    assert value(reg, h + "_bucket", le="+Inf") == 5
    assert value(reg, h + "_count") == 5
    assert value(reg, h + "_sum") == pytest.approx(47.064)


def test_duration_histogram_rejects_nonsense() -> None:
    hist = DurationHistogram((0.1, 1.0))
    with pytest.raises(ValueError):
        hist.observe(-1)
    with pytest.raises(ValueError):
        hist.observe(float("nan"))
    with pytest.raises(ValueError):
        DurationHistogram((1.0, 0.1))
    hist.observe(1.0)  # le is inclusive
    assert hist.snapshot().counts == (0, 1, 1)


def test_series_are_live_child_sas_plus_the_gone() -> None:
    """A Child SA's counters run over its life (rekeys included: the daemon sums its SAs);
    a Child SA that is gone is in child_sas_gone (its final counts, kept by the daemon):
    the series is their sum, so it never goes backwards and keeps what was counted."""
    old = child_sa("net", 1, tick=100)  # bytes_in 110_000, packets_in 110
    old |= {"replay_errors": 2, "replay_window_errors": 1, "integrity_failures": 4}
    source = FakeSource(MetricsSnapshot(ike_sas=[ike_sa("c", 1, [old])]))
    reg = make_registry(source)
    key = {"connection": "c", "child": "net", "direction": "in"}
    assert value(reg, "ipsec_child_sa_bytes_total", **key) == 110_000
    assert (
        value(reg, "ipsec_child_sa_replay_errors_total", connection="c", child="net", kind="replay")
        == 2
    )
    assert (
        value(reg, "ipsec_child_sa_replay_errors_total", connection="c", child="net", kind="window")
        == 1
    )
    assert value(reg, "ipsec_child_sa_integrity_failures_total", connection="c", child="net") == 4
    # the Child SA goes (its last 500 bytes and 1 packet counted before it went); a new
    # one of the same Child config is up
    new = child_sa("net", 2, tick=1)  # 1200 bytes, 1 packet
    gone = {("c", "net"): [110_500, 111, 55_000, 55, 2, 1, 4]}
    source.snap = MetricsSnapshot(ike_sas=[ike_sa("c", 1, [new])], child_sas_gone=gone)
    assert value(reg, "ipsec_child_sa_bytes_total", **key) == 111_700
    assert value(reg, "ipsec_child_sa_packets_total", **key) == 112
    assert value(reg, "ipsec_child_sa_integrity_failures_total", connection="c", child="net") == 4
    # no Child SA left: the series stays with what they counted; no info series
    gone = {("c", "net"): [111_800, 112, 55_600, 55, 2, 1, 4]}
    source.snap = MetricsSnapshot(ike_sas=[], child_sas_gone=gone)
    assert value(reg, "ipsec_child_sa_bytes_total", **key) == 111_800
    # a snapshot that misses a Child SA (it ended while the scrape was built): the
    # series does not go backwards, and does not vanish
    source.snap = MetricsSnapshot(ike_sas=[])
    assert value(reg, "ipsec_child_sa_bytes_total", **key) == 111_800
    assert value(reg, "ipsec_child_sa_packets_total", **key) == 112
    info = [k for k in samples(reg) if k[0] == "ipsec_child_sa_info"]
    assert info == []  # info only for SAs that exist


def test_xdp_steering_slots_and_offload_fallbacks() -> None:
    snap = MetricsSnapshot(
        xdp=[
            XdpCounter("eth0", "redirect", "esp", 9),
            XdpCounter("eth0", "drop", "ike_over_budget", 4),
        ],
        xdp_steered={1: 9},
        xdp_slots={"used": 3, "capacity": 65536, "exhausted": 2},
        offload_fallbacks={("c", "net"): 2},
    )
    reg = make_registry(FakeSource(snap))
    assert (
        value(reg, "ipsec_xdp_packets_total", interface="eth0", action="redirect", reason="esp")
        == 9
    )
    assert value(reg, "ipsec_xdp_steered_packets_total", cpu="1") == 9
    assert value(reg, "ipsec_xdp_slots", state="used") == 3
    assert value(reg, "ipsec_xdp_slots", state="capacity") == 65536
    assert value(reg, "ipsec_xdp_slot_exhausted_total") == 2
    assert value(reg, "ipsec_child_sa_offload_fallbacks_total", connection="c", child="net") == 2
    agg = make_registry(FakeSource(snap), aggregate_per_connection=True)
    assert value(agg, "ipsec_connection_offload_fallbacks_total", connection="c") == 2
    # without XDP no slot series at all
    assert "ipsec_xdp_slots" not in types(make_registry(FakeSource(MetricsSnapshot())))


def test_configured_child_sas_says_which_configured_child_is_up() -> None:
    """Every configured Child has a series, 0 when none of its Child SAs is up: what the
    alerting rules (deploy/prometheus/) watch."""
    up = child_sa("net", 1)
    deleting = child_sa("voip", 2, state="DELETING")
    snap = MetricsSnapshot(
        ike_sas=[ike_sa("c", 1, [up, deleting])],
        configured=[("c", "net", "start"), ("c", "voip", "start"), ("rw", "any", "none")],
    )
    reg = make_registry(FakeSource(snap))
    got = {
        dict(labels)["child"]: v
        for (name, labels), v in samples(reg).items()
        if name == "ipsec_configured_child_sas"
    }
    assert got == {"net": 1, "voip": 0, "any": 0}
    assert (
        value(reg, "ipsec_configured_child_sas", connection="rw", child="any", start_action="none")
        == 0
    )


def test_snapshot_from_list_sas_and_stats() -> None:
    """The daemon and the workers' supervisor build the snapshot the same way."""
    stats = {
        "retired": {"c.net": {"bytes_in": 5, "packets_in": 1, "integrity_failures": 2}},
        "offload_fallbacks": {"c.net": 1},
        "xdp": [{"interface": "eth0", "action": "pass", "reason": "esp", "packets": 3}],
        "xdp_steered": {"0": 3},
        "xdp_slots": {"used": 1, "capacity": 2, "exhausted": 0},
        "mss_clamped": {"eth1": 1},
        "rekeys": 4,
    }
    snap = snapshot_from([], stats, start_time=1.0)
    assert snap.child_sas_gone == {("c", "net"): [5, 1, 0, 0, 0, 0, 2]}
    assert (snap.offload_fallbacks, snap.xdp_steered) == ({("c", "net"): 1}, {0: 3})
    assert (snap.rekeys, snap.start_time, snap.mss_clamped) == (4, 1.0, {"eth1": 1})


def test_aggregate_per_connection() -> None:
    source = FakeSource(MetricsSnapshot(ike_sas=synthetic_ike_sas(4, tick=10)))
    reg = make_registry(source, aggregate_per_connection=True)
    names = {k[0] for k in samples(reg)}
    assert "ipsec_child_sa_info" not in names
    assert "ipsec_child_sa_bytes_total" not in names
    # conn-0 holds children of index 0 and 1: (1000 + 1100) * 10
    assert value(reg, "ipsec_connection_bytes_total", connection="conn-0", direction="in") == 21_000
    # conn-1 holds index 2 and 3: 12_000 // 2000 + 13_000 // 2000 packets out
    assert value(reg, "ipsec_connection_packets_total", connection="conn-1", direction="out") == 12


def test_fast_renderer_matches_prometheus_client() -> None:
    snap = full_snapshot()
    weird = child_sa('a"b\\c\nd', 5, tick=123_456_789)  # huge counters, escaping
    weird["bytes_out"], weird["packets_out"] = 2**60 + 12345, 10**16  # exponent forms
    sas = [*snap.ike_sas, ike_sa('conn "quoted"\\', 7, [weird])]
    reg = make_registry(FakeSource(MetricsSnapshot(ike_sas=sas, xdp=snap.xdp)))
    assert render_text(reg) == generate_latest(reg)
    agg = make_registry(FakeSource(MetricsSnapshot(ike_sas=sas)), aggregate_per_connection=True)
    assert render_text(agg) == generate_latest(agg)


def test_route_based_tunnels_and_hooks() -> None:
    """One series per XFRM interface (a missing one keeps only tunnel state and routes),
    updown runs by result (all four always present)."""
    rows = [
        {"interface": "ipsec-pri", "present": True, "up": True, "mtu": 1446, "children": 1,
         "routes": 2, "rx_bytes": 10, "rx_packets": 1, "tx_bytes": 20, "tx_packets": 2,
         "no_sa_drops": 3},
        {"interface": "ipsec-bak", "present": False, "children": 0, "routes": 0},
    ]  # fmt: skip
    snap = MetricsSnapshot(tunnels=rows, hooks={"ok": 4, "failed": 1, "running": 1})
    text = render_text(make_registry(FakeSource(snap))).decode()
    for line in (
        'ipsec_tunnel_up{interface="ipsec-pri"} 1.0',
        'ipsec_tunnel_up{interface="ipsec-bak"} 0.0',
        'ipsec_interface_up{interface="ipsec-pri"} 1.0',
        'ipsec_interface_mtu{interface="ipsec-pri"} 1446.0',
        'ipsec_routes_installed{interface="ipsec-pri"} 2.0',
        'ipsec_interface_bytes_total{direction="out",interface="ipsec-pri"} 20.0',
        'ipsec_interface_packets_total{direction="in",interface="ipsec-pri"} 1.0',
        'ipsec_interface_no_sa_drops_total{interface="ipsec-pri"} 3.0',
        'ipsec_hook_runs_total{result="ok"} 4.0',
        'ipsec_hook_runs_total{result="timeout"} 0.0',
        "ipsec_hooks_running 1.0",
        "ipsec_hooks_queued 0.0",
    ):
        assert line in text, line
    assert 'ipsec_interface_mtu{interface="ipsec-bak"}' not in text


def test_source_failure_is_reported_not_raised() -> None:
    source = FakeSource(MetricsSnapshot())
    source.error = ConnectionRefusedError("daemon not running")
    reg = make_registry(source)
    got = samples(reg)
    assert got[("ipsec_source_up", frozenset())] == 0
    assert any(k[0] == "ipsec_build_info" for k in got)
    assert not any(k[0] == "ipsec_ike_sas" for k in got)


def test_malformed_source_values_count_as_zero() -> None:
    child: dict[str, Any] = {"name": "x", "bytes_in": -5, "bytes_out": "12", "packets_in": None}
    sas: list[Any] = [
        {"connection": "c", "state": "WEIRD", "children": [child, None, "x"]},
        {"children": None},
        None,
        "garbage",
    ]
    twice = [XdpCounter("eth0", "drop", "x", 2), XdpCounter("eth0", "drop", "x", 3)]
    snap = MetricsSnapshot(ike_sas=sas, mss_clamped={"e": -1}, xdp=twice)
    reg = make_registry(FakeSource(snap))
    assert value(reg, "ipsec_child_sa_bytes_total", connection="c", child="x", direction="in") == 0
    assert value(reg, "ipsec_ike_sas", state="WEIRD") == 1
    assert value(reg, "ipsec_mss_clamped_total", interface="e") == 0
    # the same labels twice would be a duplicate series (Prometheus rejects the scrape)
    assert value(reg, "ipsec_xdp_packets_total", interface="eth0", action="drop", reason="x") == 5


def test_key_material_in_the_source_is_never_exported() -> None:
    child = child_sa("net", 1, tick=1)
    child["encr_key_in"] = "deadbeefcafebabe00112233"
    ike = ike_sa("c", 1, [child])
    ike["psk"] = "hunter2-secret"
    text = render_text(make_registry(FakeSource(MetricsSnapshot(ike_sas=[ike])))).decode()
    assert "deadbeef" not in text and "hunter2" not in text


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9810") == ("127.0.0.1", 9810)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9810") == ("127.0.0.1", 9810)
    assert parse_listen(("::1", 9810)) == ("::1", 9810)  # the config's (host, port)
    with pytest.raises(MetricsError):
        parse_listen(("::1", 70000))
    for bad in ("9810", "host:", "host:http", "h:70000"):
        with pytest.raises(MetricsError):
            parse_listen(bad)


def test_exporter_serves_http_and_closes() -> None:
    with start_exporter(FakeSource(full_snapshot()), "127.0.0.1:0") as exp:
        with urllib.request.urlopen(exp.url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read()
        assert body == render_text(exp.registry)
        req = urllib.request.Request(exp.url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(resp.read()).startswith(b"# HELP ipsec_build_info")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(exp.url.replace("/metrics", "/nope"), timeout=5)
        assert err.value.code == 404
        host, port = exp.address
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()


def test_exporter_port_in_use_is_a_user_error() -> None:
    with start_exporter(FakeSource(MetricsSnapshot()), "127.0.0.1:0") as exp:
        with pytest.raises(MetricsError, match="cannot serve metrics"):
            start_exporter(FakeSource(MetricsSnapshot()), f"127.0.0.1:{exp.address[1]}")


def test_exporter_on_ipv6_loopback() -> None:
    with start_exporter(FakeSource(MetricsSnapshot()), "[::1]:0") as exp:
        assert exp.url.startswith("http://[::1]:")
        with urllib.request.urlopen(exp.url, timeout=5) as resp:
            assert resp.read().startswith(b"# HELP ipsec_build_info")
