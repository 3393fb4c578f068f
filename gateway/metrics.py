"""Prometheus exporter: every `ipsec_*` series, read from the gateway at scrape time.

Theory of operation
-------------------
The daemon owns the state; this module owns only its presentation. A `MetricsSource`
hands over one immutable `MetricsSnapshot` per scrape (IKE/Child SAs in the control
API's list-sas shape, XDP verdict counters, MSS clamp counts, kernel xfrm_stat errors,
handshake-duration histogram, event totals). `GatewayCollector` turns a snapshot into
metric families; `start_exporter(source)` serves them over HTTP and returns a closable
handle. Nothing is cached between scrapes except what counter semantics require:

* Child SA counters are labelled by connection, child and direction, never by SPI
  (SPIs churn at every rekey, RFC 7296 §2.8). The series is the sum over the live Child
  SAs of that connection+child (each one's counters run over its whole life, rekeys
  included) plus what its Child SAs that are gone counted (`child_sas_gone`, which the
  daemon keeps from each SA's final counts, gateway/daemon/traffic.py): nothing counted
  before a deletion is lost. The collector also never exports a value below one it
  exported before for the same series (a Child SA ending while a scrape is being built
  may be missing from that one scrape; a restarted worker starts from zero).
* SPIs, algorithms, offload and mode go into the `ipsec_child_sa_info` series (value 1).

Every series name, type and label set is documented in docs/metrics.md; tests check the
exposition with `promtool check metrics` and against a real Prometheus server.
"""

from __future__ import annotations

import bisect
import gzip
import math
import platform
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway.errors import GatewayError

PREFIX = "ipsec_"
DEFAULT_LISTEN = "127.0.0.1:9810"
SCRAPE_TIMEOUT = 10.0  # s a snapshot may take (Prometheus' default scrape_timeout)

IKE_SA_STATES: tuple[str, ...] = ("CONNECTING", "ESTABLISHED", "REKEYING", "DELETING")
CHILD_SA_STATES: tuple[str, ...] = ("INSTALLED", "REKEYING", "DELETING")
# Label names of the per-SA families in sorted order: the order the text format writes
# them in, so rows are built in that order and written without reordering.
INFO_LABELS = ("child", "connection", "esp_proposal", "mode", "offload", "spi_in", "spi_out")
# a Child SA's counters in list-sas (and gateway.dataplane.base.Counters' order)
COUNTER_KEYS: tuple[str, ...] = (
    "bytes_in",
    "packets_in",
    "bytes_out",
    "packets_out",
    "replay_errors",
    "replay_window_errors",
    "integrity_failures",
)

# IKE_SA_INIT + IKE_AUTH over a WAN: tens of ms to a few seconds (EAP, retransmits).
HANDSHAKE_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class MetricsError(GatewayError):
    """The exporter cannot be started as asked (bad listen address, port in use...)."""


@dataclass(frozen=True, slots=True)
class XdpCounter:
    """One XDP verdict counter: packets that got `action` for `reason` on `interface`."""

    interface: str
    action: str
    reason: str
    packets: int


class VerdictCounter(Protocol):
    """What `MetricsSnapshot.xdp` holds: `XdpCounter`, or the BPF loader's `XdpVerdict`
    (bpf.loader.Dataplane.verdicts()), which has the same fields."""

    @property
    def interface(self) -> str: ...

    @property
    def action(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def packets(self) -> int: ...


@dataclass(frozen=True, slots=True)
class HistogramCounts:
    """A cumulative histogram: `counts[i]` observations <= `bounds[i]`, then +Inf."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # cumulative, len(bounds) + 1 (the last one is +Inf == count)
    total: float  # sum of the observed values

    @property
    def count(self) -> int:
        return self.counts[-1] if self.counts else 0


class DurationHistogram:
    """Thread-safe accumulator the daemon observes handshake durations into.

    `snapshot()` gives the immutable `HistogramCounts` a `MetricsSnapshot` carries.
    """

    __slots__ = ("_bounds", "_buckets", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float] = HANDSHAKE_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be strictly increasing and non-empty")
        self._bounds = tuple(float(b) for b in bounds)
        self._buckets = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a duration cannot be {seconds!r}")
        with self._lock:
            self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramCounts:
        with self._lock:
            running, cumulative = 0, []
            for n in self._buckets:
                running += n
                cumulative.append(running)
            return HistogramCounts(self._bounds, tuple(cumulative), self._sum)


def empty_histogram(bounds: Sequence[float] = HANDSHAKE_BUCKETS) -> HistogramCounts:
    return HistogramCounts(tuple(bounds), (0,) * (len(bounds) + 1), 0.0)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one scrape exports, read in one go so the numbers agree with each other.

    The SAs come either as `ike_states` (IKE SAs by state) + `child_rows` (what the
    daemon builds for a scrape, off its event loop) or as `ike_sas` in the control API's
    list-sas shape (the workers' supervisor, tests): dicts with connection, state,
    children[{name, state, spi_in, spi_out, mode, esp_proposal, offload, bytes_in,
    bytes_out, packets_in, packets_out, replay_errors, replay_window_errors,
    integrity_failures}, ...], each Child's counters over its whole life. Other keys are
    ignored.
    """

    ike_sas: Sequence[Mapping[str, Any]] = ()
    ike_states: Mapping[str, int] | None = None
    child_rows: Sequence[ChildRow] | None = None
    # every configured Child: (connection, child, start_action)
    configured: Sequence[tuple[str, str, str]] = ()
    # (connection, child) -> what its Child SAs that are gone counted (COUNTER_KEYS order)
    child_sas_gone: Mapping[tuple[str, str], Sequence[int]] = field(default_factory=dict)
    # (connection, child) -> installs/rekeys/moves where offload "auto" got less
    offload_fallbacks: Mapping[tuple[str, str], int] = field(default_factory=dict)
    xdp: Sequence[VerdictCounter] = ()  # e.g. AttachedPrograms.verdicts()
    xdp_steered: Mapping[int, int] = field(default_factory=dict)  # CPU -> ESP redirected
    # XDP Child SA slots: "used", "capacity", "exhausted" (Child SAs refused for want of one)
    xdp_slots: Mapping[str, int] = field(default_factory=dict)
    mss_clamped: Mapping[str, int] = field(default_factory=dict)  # AttachedPrograms.mss_clamped()
    xfrm_errors: Mapping[str, int] = field(default_factory=dict)  # xfrm_stat name -> count
    handshake_durations: HistogramCounts = field(default_factory=empty_histogram)
    rekeys: int = 0  # Child SA rekeys completed
    ike_rekeys: int = 0
    dpd_failures: int = 0
    auth_failures: int = 0
    reauths: int = 0  # IKE SAs that reauthenticated an older one (RFC 7296 §2.8.3)
    # virtual-IP pools: pool -> {"online", "offline", "free"} -> addresses
    pools: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    start_time: float | None = None  # unix time the daemon started
    # route-based tunnels (stats `tunnels`): one row per XFRM interface with interface,
    # if_id, present, up, mtu, children, routes, rx/tx bytes/packets, no_sa_drops
    tunnels: Sequence[Mapping[str, Any]] = ()
    hooks: Mapping[str, int] = field(default_factory=dict)  # HookCounters (stats `hooks`)

    def rows(self) -> tuple[Mapping[str, int], Sequence[ChildRow]]:
        """(IKE SAs by state, Child SA rows), whichever way they were given."""
        if self.child_rows is not None:
            return self.ike_states or {}, self.child_rows
        return rows_from_list_sas(self.ike_sas)


def snapshot_from(
    sas: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    *,
    start_time: float | None,
    configured: Sequence[tuple[str, str, str]] = (),
    rows: tuple[Mapping[str, int], Sequence[ChildRow]] | None = None,
) -> MetricsSnapshot:
    """A snapshot from the control API's list-sas and stats answers (the daemon's own, or
    the workers' merged by their supervisor: one way for both) and the configured
    Children (connection, child, start_action); `rows` (IKE SAs by state, Child SA rows)
    instead of list-sas' `sas` where the caller has them."""

    def pair(name: str) -> tuple[str, str]:
        connection, _, child = name.partition(".")
        return connection, child

    durations = stats.get("handshake_durations")
    return MetricsSnapshot(
        ike_sas=sas,
        ike_states=rows[0] if rows is not None else None,
        child_rows=rows[1] if rows is not None else None,
        configured=configured,
        child_sas_gone={
            pair(name): [_count(row.get(k)) for k in COUNTER_KEYS]
            for name, row in (stats.get("retired") or {}).items()
        },
        offload_fallbacks={
            pair(name): _count(n) for name, n in (stats.get("offload_fallbacks") or {}).items()
        },
        xdp=[XdpCounter(**row) for row in stats.get("xdp") or ()],
        xdp_steered={int(cpu): _count(n) for cpu, n in (stats.get("xdp_steered") or {}).items()},
        xdp_slots=stats.get("xdp_slots") or {},
        mss_clamped=stats.get("mss_clamped") or {},
        xfrm_errors=stats.get("xfrm_errors") or {},
        handshake_durations=HistogramCounts(
            tuple(durations["bounds"]), tuple(durations["counts"]), durations["sum"]
        )
        if durations is not None
        else empty_histogram(),
        rekeys=stats.get("rekeys", 0),
        ike_rekeys=stats.get("ike_rekeys", 0),
        dpd_failures=stats.get("dpd_failures", 0),
        auth_failures=stats.get("auth_failures", 0),
        reauths=stats.get("reauths", 0),
        pools=stats.get("pools") or {},
        tunnels=stats.get("tunnels") or (),
        hooks=stats.get("hooks") or {},
        start_time=start_time,
    )


UP_STATES = frozenset(("INSTALLED", "REKEYING"))  # a Child SA that carries traffic
IKE_UP_STATES = frozenset(("ESTABLISHED", "REKEYING"))


class ChildRow(NamedTuple):
    """One Child SA as a scrape needs it; `counters` in COUNTER_KEYS order, over the
    Child's whole life."""

    connection: str
    child: str
    state: str
    ike_state: str
    esp_proposal: str
    mode: str
    offload: str
    spi_in: str
    spi_out: str
    counters: tuple[int, ...]


def rows_from_list_sas(
    ike_sas: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, int], list[ChildRow]]:
    """(IKE SAs by state, one ChildRow per Child SA) from list-sas' shape; malformed
    entries are skipped, malformed counters count 0."""
    states: dict[str, int] = {}
    rows: list[ChildRow] = []
    for ike in ike_sas:
        if not isinstance(ike, Mapping):
            continue
        state = str(ike.get("state", "UNKNOWN"))
        states[state] = states.get(state, 0) + 1
        conn = str(ike.get("connection", ""))
        for child in ike.get("children") or ():
            if not isinstance(child, Mapping):
                continue
            rows.append(
                ChildRow(
                    conn,
                    str(child.get("name", "")),
                    str(child.get("state", "UNKNOWN")),
                    state,
                    str(child.get("esp_proposal", "")),
                    str(child.get("mode", "")),
                    str(child.get("offload", "none")),
                    str(child.get("spi_in", "")),
                    str(child.get("spi_out", "")),
                    tuple(_count(child.get(k)) for k in COUNTER_KEYS),
                )
            )
    return states, rows


class MetricsSource(Protocol):
    """What the exporter reads. Called from the HTTP server's thread at every scrape:
    return a snapshot that is safe to read while the daemon keeps running (a copy, or
    objects the daemon replaces rather than mutates). Raise `OSError` or `GatewayError`
    when the data cannot be read; the scrape then reports `ipsec_source_up 0`."""

    def metrics_snapshot(self) -> MetricsSnapshot: ...


class GatewayCollector(Collector):
    """Custom collector turning a `MetricsSource` snapshot into the `ipsec_*` families.

    aggregate_per_connection: for very large deployments, export the traffic counters per
    connection (`ipsec_connection_*`) instead of per connection+child, and no
    `ipsec_child_sa_info` series (whose cardinality is one per Child SA).
    """

    def __init__(self, source: MetricsSource, *, aggregate_per_connection: bool = False) -> None:
        self._source = source
        self._aggregate = aggregate_per_connection
        self._lock = threading.Lock()
        # (connection, child) -> the counts last exported: a series never goes backwards
        self._exported: dict[tuple[str, str], list[int]] = {}

    def describe(self) -> Iterable[Metric]:
        # Registration must not scrape the source (the daemon may not be up yet).
        return ()

    def collect(self) -> Iterator[Metric]:
        yield _build_info()
        try:
            snap = self._source.metrics_snapshot()
        except (OSError, GatewayError):
            yield _gauge("source_up", "Whether the last scrape could read the gateway", 0)
            return
        yield _gauge("source_up", "Whether the last scrape could read the gateway", 1)
        with self._lock:
            yield from self._collect(snap)

    def _collect(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        if snap.start_time is not None:
            yield _gauge(
                "start_time_seconds", "Unix time the gateway daemon started", snap.start_time
            )
        ike_states = dict.fromkeys(IKE_SA_STATES, 0)
        child_states = dict.fromkeys(CHILD_SA_STATES, 0)
        per_child: dict[tuple[str, str], list[int]] = {}
        up: dict[tuple[str, str], int] = {}  # Child SAs up per (connection, child)
        info_rows: list[tuple[tuple[str, ...], int]] = []
        add_info = info_rows.append
        keys = COUNTER_KEYS
        given_states, rows = snap.rows()
        for state, n in given_states.items():
            ike_states[state] = ike_states.get(state, 0) + n
        aggregate = self._aggregate
        for row in rows:
            conn, name, cstate = row[0], row[1], row[2]
            child_states[cstate] = child_states.get(cstate, 0) + 1
            key = (conn, name)
            if cstate in UP_STATES and row[3] in IKE_UP_STATES:
                up[key] = up.get(key, 0) + 1
            t = per_child.get(key)
            if t is None:
                per_child[key] = list(row[9])
            else:
                counts = row[9]
                t[0] += counts[0]
                t[1] += counts[1]
                t[2] += counts[2]
                t[3] += counts[3]
                t[4] += counts[4]
                t[5] += counts[5]
                t[6] += counts[6]
            if not aggregate:
                # label values in INFO_LABELS (sorted) order
                add_info(((name, conn, row[4], row[5], row[6], row[7], row[8]), 1))
        for key, gone in snap.child_sas_gone.items():
            t = per_child.get(key)
            if t is None:
                t = per_child[key] = [0] * len(keys)
            for i, n in enumerate(gone[: len(keys)]):
                t[i] += _count(n)
        self._never_backwards(per_child)
        yield _labelled_gauge("ike_sas", "IKE SAs by state", "state", ike_states)
        yield _labelled_gauge("child_sas", "Child SAs by state", "state", child_states)
        yield RowsFamily(
            PREFIX + "configured_child_sas",
            "Child SAs up (installed or rekeying) per configured Child, 0 when it has none",
            "gauge",
            ("child", "connection", "start_action"),
            [
                ((child, conn, action), up.get((conn, child), 0))
                for conn, child, action in snap.configured
            ],
        )
        yield from self._per_child(per_child, snap.offload_fallbacks)
        if not self._aggregate:
            yield RowsFamily(
                PREFIX + "child_sa_info",
                "Child SA identity and algorithms (value 1); SPIs change at every rekey",
                "gauge",
                INFO_LABELS,
                info_rows,
            )
        yield _handshakes(snap.handshake_durations)
        yield _counter("child_sa_rekeys_total", "Child SA rekeys completed", snap.rekeys)
        yield _counter("ike_sa_rekeys_total", "IKE SA rekeys completed", snap.ike_rekeys)
        yield _counter(
            "dpd_failures_total", "IKE SAs declared dead by dead peer detection", snap.dpd_failures
        )
        yield _counter(
            "auth_failures_total",
            "IKE_AUTH exchanges that failed authentication",
            snap.auth_failures,
        )
        yield _counter(
            "ike_sa_reauths_total",
            "IKE SAs that reauthenticated an older one (make-before-break)",
            snap.reauths,
        )
        pools = GaugeMetricFamily(
            PREFIX + "pool_addresses",
            "Virtual-IP pool addresses by state (online: held by an IKE SA; offline: leased "
            "to an identity that is gone; free: never handed out)",
            labels=("pool", "state"),
        )
        for pool, states in sorted(snap.pools.items()):
            for state in ("online", "offline", "free"):
                pools.add_metric([pool, state], _count(states.get(state)))
        yield pools
        xdp = CounterMetricFamily(
            PREFIX + "xdp_packets",
            "Packets seen by the XDP/TC programs, by verdict (action) and reason",
            labels=("interface", "action", "reason"),
        )
        verdicts: dict[tuple[str, str, str], int] = {}
        for c in snap.xdp:  # rows with the same labels are summed: one series each
            vkey = (str(c.interface), str(c.action), str(c.reason))
            verdicts[vkey] = verdicts.get(vkey, 0) + _count(c.packets)
        for labels, n in sorted(verdicts.items()):
            xdp.add_metric(list(labels), n)
        yield xdp
        steered = CounterMetricFamily(
            PREFIX + "xdp_steered_packets",
            "ESP packets the XDP program redirected to a CPU of the steering set",
            labels=("cpu",),
        )
        for cpu, n in sorted(snap.xdp_steered.items()):
            steered.add_metric([str(cpu)], _count(n))
        yield steered
        if snap.xdp_slots:
            yield _labelled_gauge(
                "xdp_slots",
                "XDP Child SA counter slots in use and in all ([gateway.xdp] max_child_sas)",
                "state",
                {s: _count(snap.xdp_slots.get(s)) for s in ("used", "capacity")},
            )
            yield _counter(
                "xdp_slot_exhausted_total",
                "Child SAs refused (TEMPORARY_FAILURE) because every XDP slot was in use",
                _count(snap.xdp_slots.get("exhausted")),
            )
        mss = CounterMetricFamily(
            PREFIX + "mss_clamped", "TCP SYNs whose MSS was clamped", labels=("interface",)
        )
        for ifname, n in sorted(snap.mss_clamped.items()):
            mss.add_metric([ifname], _count(n))
        yield mss
        yield from _tunnels(snap.tunnels)
        yield from _hooks(snap.hooks)
        xfrm = CounterMetricFamily(
            PREFIX + "xfrm_errors",
            "Kernel XFRM errors from /proc/net/xfrm_stat, by counter name",
            labels=("error",),
        )
        for name, n in sorted(snap.xfrm_errors.items()):
            xfrm.add_metric([name], _count(n))
        yield xfrm

    def _never_backwards(self, per_child: dict[tuple[str, str], list[int]]) -> None:
        """No counter below what was exported before (a Child SA that ended while a
        scrape was being built, a worker restarted), and no series that vanishes."""
        exported = self._exported
        for key, last in exported.items():
            t = per_child.get(key)
            if t is None:
                per_child[key] = list(last)
            else:
                for i, n in enumerate(last):
                    if t[i] < n:
                        t[i] = n
        for key, t in per_child.items():
            exported[key] = list(t)

    def _per_child(
        self, per_child: dict[tuple[str, str], list[int]], fallbacks: Mapping[tuple[str, str], int]
    ) -> Iterator[Metric]:
        """Traffic, replay/integrity errors and offload fallbacks per connection+child
        (or per connection when aggregated)."""
        if self._aggregate:
            labels: tuple[str, ...] = ("connection",)
            prefix, what = "connection_", "connection"
            merged: dict[tuple[str, ...], list[int]] = {}
            for (conn, _child), t in per_child.items():
                m = merged.get((conn,))
                if m is None:
                    merged[(conn,)] = list(t)
                else:
                    for i, n in enumerate(t):
                        m[i] += n
            rows: Iterable[tuple[tuple[str, ...], list[int]]] = merged.items()
            fallback_rows: dict[tuple[str, ...], int] = {}
            for (conn, _child), n in fallbacks.items():
                fallback_rows[(conn,)] = fallback_rows.get((conn,), 0) + _count(n)
        else:
            labels = ("child", "connection")
            prefix, what = "child_sa_", "connection and child (over its Child SAs' lives)"
            rows = (((child, conn), t) for (conn, child), t in per_child.items())
            fallback_rows = {(child, conn): _count(n) for (conn, child), n in fallbacks.items()}
        byte_rows: list[tuple[tuple[str, ...], int]] = []
        packet_rows: list[tuple[tuple[str, ...], int]] = []
        replay_rows: list[tuple[tuple[str, ...], int]] = []
        integrity_rows: list[tuple[tuple[str, ...], int]] = []
        add_b, add_p = byte_rows.append, packet_rows.append
        for key, t in rows:
            add_b(((*key, "in"), t[0]))
            add_b(((*key, "out"), t[2]))
            add_p(((*key, "in"), t[1]))
            add_p(((*key, "out"), t[3]))
            replay_rows.append(((*key, "replay"), t[4]))
            replay_rows.append(((*key, "window"), t[5]))
            integrity_rows.append((key, t[6]))
        direction = (*labels, "direction")
        yield RowsFamily(
            PREFIX + prefix + "bytes", f"ESP bytes by {what}", "counter", direction, byte_rows
        )
        yield RowsFamily(
            PREFIX + prefix + "packets", f"ESP packets by {what}", "counter", direction, packet_rows
        )
        yield RowsFamily(
            PREFIX + prefix + "replay_errors",
            f"Inbound ESP dropped by the anti-replay check by {what}: kind replay "
            "(already seen) or window (too old)",
            "counter",
            (*labels, "kind"),
            replay_rows,
        )
        yield RowsFamily(
            PREFIX + prefix + "integrity_failures",
            f"Inbound ESP whose integrity check (ICV) failed by {what}",
            "counter",
            labels,
            integrity_rows,
        )
        yield RowsFamily(
            PREFIX + prefix + "offload_fallbacks",
            'Child SA installs, rekeys and moves where offload "auto" got less than asked '
            f"(running in software) by {what}",
            "counter",
            labels,
            sorted(fallback_rows.items()),
        )


HOOK_RESULTS = ("ok", "failed", "timeout", "error")


def _tunnels(rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """Route-based tunnels, one series per XFRM interface (docs/metrics.md)."""
    up = GaugeMetricFamily(
        PREFIX + "tunnel_up",
        "Route-based tunnel state: 1 while a Child SA is up on its XFRM interface",
        labels=("interface",),
    )
    link = GaugeMetricFamily(
        PREFIX + "interface_up",
        "XFRM interface administratively up (1), down (0); absent: the interface is missing",
        labels=("interface",),
    )
    mtu = GaugeMetricFamily(PREFIX + "interface_mtu", "XFRM interface MTU", labels=("interface",))
    routes = GaugeMetricFamily(
        PREFIX + "routes_installed",
        "Routes the gateway holds on the XFRM interface",
        labels=("interface",),
    )
    octets = CounterMetricFamily(
        PREFIX + "interface_bytes",
        "Bytes through the XFRM interface (inner packets), by direction",
        labels=("interface", "direction"),
    )
    packets = CounterMetricFamily(
        PREFIX + "interface_packets",
        "Packets through the XFRM interface (inner packets), by direction",
        labels=("interface", "direction"),
    )
    drops = CounterMetricFamily(
        PREFIX + "interface_no_sa_drops",
        "Packets routed into the XFRM interface while no SA could take them (dropped, "
        "never sent in clear)",
        labels=("interface",),
    )
    for row in rows:
        name = str(row.get("interface", ""))
        up.add_metric([name], 1 if _count(row.get("children")) > 0 and row.get("up") else 0)
        routes.add_metric([name], _count(row.get("routes")))
        if not row.get("present"):
            continue
        link.add_metric([name], 1 if row.get("up") else 0)
        mtu.add_metric([name], _count(row.get("mtu")))
        for direction, prefix in (("in", "rx"), ("out", "tx")):
            octets.add_metric([name, direction], _count(row.get(f"{prefix}_bytes")))
            packets.add_metric([name, direction], _count(row.get(f"{prefix}_packets")))
        drops.add_metric([name], _count(row.get("no_sa_drops")))
    yield from (up, link, mtu, routes, octets, packets, drops)


def _hooks(counters: Mapping[str, int]) -> Iterator[Metric]:
    runs = CounterMetricFamily(
        PREFIX + "hook_runs", "updown program runs by result", labels=("result",)
    )
    for result in HOOK_RESULTS:
        runs.add_metric([result], _count(counters.get(result, 0)))
    yield runs
    yield _gauge("hooks_running", "updown programs running now", _count(counters.get("running")))
    yield _gauge("hooks_queued", "updown runs waiting to start", _count(counters.get("queued")))


class RowsFamily(Metric):
    """A counter or gauge family held as rows of (label values, value).

    Generic consumers (prometheus_client's generate_latest, the registry API) see the usual
    `samples`, built on demand; `render_text` writes the rows straight to text, which is
    what keeps a scrape of 10,000 Child SAs cheap."""

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        labelnames: Sequence[str],
        rows: list[tuple[tuple[str, ...], int]],
    ) -> None:
        super().__init__(name, documentation, typ)
        self.labelnames = tuple(labelnames)
        self.rows = rows

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        name = self.name + "_total" if self.type == "counter" else self.name
        names = self.labelnames
        return [
            Sample(name, dict(zip(names, values, strict=True)), value)
            for values, value in self.rows
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        """Metric.__init__ assigns an empty list; the rows are the samples."""

    def text_lines(self) -> list[str]:
        """The sample lines, as generate_latest writes them (labels in sorted order)."""
        name = self.name + "_total" if self.type == "counter" else self.name
        labelnames = self.labelnames
        order = sorted(range(len(labelnames)), key=labelnames.__getitem__)
        fmt = (
            name
            + "{"
            + ",".join(f'{escape_label_name(labelnames[i])}="%s"' for i in order)
            + "} %s\n"
        )
        rows = self.rows
        escape: dict[str, str] = {}
        # one scan of all values at C speed; the per-value map only when one needs it
        blob = "\x00".join(["\x00".join(values) for values, _ in rows])
        if "\\" in blob or "\n" in blob or '"' in blob:
            distinct: set[str] = set()
            for values, _ in rows:
                distinct.update(values)
            escape = {v: _escape_value(v) for v in distinct if v != _escape_value(v)}
        in_order = order == list(range(len(labelnames)))
        go_float = _go_float
        out: list[str] = []
        append = out.append
        for values, value in rows:
            if escape:
                values = tuple([escape.get(v, v) for v in values])
            if not in_order:
                values = tuple([values[i] for i in order])
            append(fmt % (*values, go_float(value)))
        return out


def _escape_value(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def _count(value: object) -> int:
    """A counter value from the source; anything not a non-negative int counts as 0."""
    return value if isinstance(value, int) and value >= 0 else 0


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name.removesuffix("_total"), doc, value=_count(value))


def _labelled_gauge(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    g = GaugeMetricFamily(PREFIX + name, doc, labels=(label,))
    for key, n in values.items():
        g.add_metric([key], n)
    return g


def _handshakes(h: HistogramCounts) -> Metric:
    buckets = [(_le(b), c) for b, c in zip(h.bounds, h.counts, strict=False)]
    buckets.append(("+Inf", h.count))
    return HistogramMetricFamily(
        PREFIX + "ike_handshake_duration_seconds",
        "Time from the first IKE_SA_INIT to an established IKE SA",
        buckets=buckets,
        sum_value=h.total,
    )


def _le(bound: float) -> str:
    return repr(float(bound))


def _build_info() -> Metric:
    g = GaugeMetricFamily(
        PREFIX + "build_info", "Gateway version (value 1)", labels=("version", "python")
    )
    g.add_metric([__version__, platform.python_version()], 1)
    return g


def make_registry(
    source: MetricsSource,
    *,
    aggregate_per_connection: bool = False,
    registry: CollectorRegistry | None = None,
) -> CollectorRegistry:
    """Register a `GatewayCollector` on `registry` (a fresh one by default)."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(source, aggregate_per_connection=aggregate_per_connection))
    return registry


def parse_listen(listen: str | tuple[str, int]) -> tuple[str, int]:
    """'127.0.0.1:9810', '[::1]:9810', ':9810' (loopback) or ("::1", 9810) -> (host, port)."""
    if isinstance(listen, tuple):
        host, port = listen
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise MetricsError(f"metrics listen port {port!r} is not a port number")
        return host or "127.0.0.1", port
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsError(f"metrics listen address {listen!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return host, int(port_text)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PROM_TYPES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}


def render_text(registry: Collector) -> bytes:
    """The Prometheus text format 0.0.4 of `registry`, byte for byte what
    `prometheus_client.generate_latest` writes, about three times faster at 10,000 Child SAs.

    generate_latest validates and escapes every label name of every sample; here each
    distinct label-name tuple is escaped once, label values get the same backslash
    escaping, and integral sample values skip the float round trip.
    """
    out: list[str] = []
    append = out.append
    label_prefixes: dict[tuple[str, ...], tuple[tuple[str, ...], list[str]]] = {}
    for metric in registry.collect():
        mname, mtype = metric.name, metric.type
        if mtype == "counter":
            mname += "_total"
        elif mtype == "info":
            mname += "_info"
        mtype = _PROM_TYPES.get(mtype, mtype)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {escape_metric_name(mname)} {doc}\n")
        append(f"# TYPE {escape_metric_name(mname)} {mtype}\n")
        trailing: dict[str, list[str]] = {}
        names_cache: dict[str, str] = {}
        if isinstance(metric, RowsFamily):
            out.extend(metric.text_lines())
            continue
        for s in metric.samples:
            name = names_cache.get(s.name)
            if name is None:
                name = names_cache[s.name] = escape_metric_name(s.name)
            labels = s.labels
            if labels:
                keys = tuple(labels)
                cached = label_prefixes.get(keys)
                if cached is None:
                    order = tuple(sorted(keys))
                    cached = label_prefixes[keys] = (
                        order,
                        [f'{escape_label_name(k)}="' for k in order],
                    )
                order, prefixes = cached
                parts = []
                for k, prefix in zip(order, prefixes, strict=True):
                    parts.append(prefix + _escape_value(labels[k]) + '"')
                line = f"{name}{{{','.join(parts)}}} {_go_float(s.value)}"
            else:
                line = f"{name} {_go_float(s.value)}"
            if s.timestamp is not None:
                line += f" {int(float(s.timestamp) * 1000):d}"
            suffix = s.name[len(metric.name) :]
            if suffix in ("_created", "_gsum", "_gcount") and s.name.startswith(metric.name):
                trailing.setdefault(suffix, []).append(line + "\n")
            else:
                append(line + "\n")
        for suffix, lines in sorted(trailing.items()):
            append(f"# HELP {escape_metric_name(metric.name + suffix)} {doc}\n")
            append(f"# TYPE {escape_metric_name(metric.name + suffix)} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")


def _go_float(value: float) -> str:
    """floatToGoString's text, without its call chain for the common case: counters."""
    if type(value) is int and value >= 0:
        if value < 1_000_000:
            return f"{value}.0"  # repr(float(n)) is "n.0" below 1e6
        s = repr(float(value))
        dot = s.find(".")
        if dot > 6:  # Go switches to an exponent sooner than Python (floatToGoString)
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return s
    return str(floatToGoString(value))


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        """Scrapes are not worth a log line each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _DualStackServer(_ThreadingServer):
    address_family = socket.AF_INET6


def metrics_app(registry: Collector) -> Callable[..., list[bytes]]:
    """WSGI app: GET /metrics (gzip when asked) -> text format 0.0.4 of `registry`."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"use GET\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ipsec gateway exporter: see /metrics\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: see /metrics\n"]
        body = render_text(registry)
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body] if method == "GET" else []

    return app


class Exporter:
    """A running /metrics HTTP server. `close()` stops it; also a context manager."""

    def __init__(self, server: WSGIServer, registry: CollectorRegistry) -> None:
        self._server = server
        self.registry = registry
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-exporter", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_exporter(
    source: MetricsSource,
    listen: str | tuple[str, int] = DEFAULT_LISTEN,
    *,
    aggregate_per_connection: bool = False,
    registry: CollectorRegistry | None = None,
) -> Exporter:
    """Serve `ipsec_*` metrics read from `source` on http://LISTEN/metrics (port 0: any).

    Returns the running `Exporter`; `close()` it on shutdown."""
    host, port = parse_listen(listen)
    reg = make_registry(
        source, aggregate_per_connection=aggregate_per_connection, registry=registry
    )
    server_class = _DualStackServer if ":" in host else _ThreadingServer
    try:
        server = make_server(
            host, port, metrics_app(reg), server_class=server_class, handler_class=_SilentHandler
        )
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    return Exporter(server, reg)
