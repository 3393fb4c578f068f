"""The gateway-wide counters the engine's events move (stats, /metrics), and the
handshake-duration histogram (ipsec_ike_handshake_duration_seconds).

    IkeSaEstablished  handshakes (+ its duration, when we initiated it)
    IkeSaRekeyed      ike_rekeys          ChildSaRekeyed  rekeys
    DpdFailed         dpd_failures        IkeSaRedirected redirects
    IkeSaFailed       auth_failures (AUTHENTICATION_FAILED)

Traffic of SAs that are gone is banked by gateway/daemon/children.py, install failures
counted there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.daemon.feature import EventContext, Feature, Host
from ike import events as ev


class Tally(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.histogram: Any = None  # gateway.metrics.DurationHistogram, once kept

    def keep_handshake_durations(self) -> None:
        """Observe handshake durations (the metrics histogram) also without an exporter
        of our own: a worker's supervisor reads them from `stats`."""
        from gateway import metrics

        if self.histogram is None:
            self.histogram = metrics.DurationHistogram()

    def on_event(self, event: Any, ctx: EventContext) -> None:
        t = self.d.totals
        match event:
            case ev.IkeSaEstablished():
                t.handshakes += 1
                r = self.d.sas.get(event.ike_sa)
                if self.histogram is not None and r is not None and r.initiator:
                    self.histogram.observe(max(0.0, event.time - r.started_at))
            case ev.IkeSaRekeyed():
                t.ike_rekeys += 1
            case ev.ChildSaRekeyed():
                t.rekeys += 1
            case ev.DpdFailed():
                t.dpd_failures += 1
            case ev.IkeSaRedirected():
                t.redirects += 1
            case ev.IkeSaFailed() if "AUTHENTICATION_FAILED" in event.reason:
                t.auth_failures += 1

    def stats(self) -> Mapping[str, Any]:
        """`handshake_durations` (cumulative counts per bucket bound, then +Inf) while
        the histogram is kept (metrics on, or a worker)."""
        if self.histogram is None:
            return {}
        h = self.histogram.snapshot()
        return {
            "handshake_durations": {
                "bounds": list(h.bounds),
                "counts": list(h.counts),
                "sum": h.total,
            }
        }
