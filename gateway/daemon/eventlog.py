"""What the daemon says about each engine event: the feature manager that reports
(logs and publishes, gateway/daemon/report.py) every SA lifecycle event once the features
before it have acted on it, so the report says what came of it (a Child SA's offload
after its install; a ChildSaFailed where the data plane refused it).

The log keeps ports, proposals and reasons for the operator; the published event is the
control API's contract (docs/daemon.md), which the console shows.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.report import LogAs, Logged, Published, endpoint, role, spi, yes_no
from ike import events as ev


class EventLog(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon

    def on_event(self, event: Any, ctx: EventContext) -> None:
        report = self.d.report
        match event:
            case ev.IkeSaEstablished():
                report(
                    "ike-established",
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    local_addr=Published(event.local[0]),
                    remote_addr=Published(event.remote[0]),
                    role=Logged(role(event.initiator)),
                    local=Logged(endpoint(event.local)),
                    remote=Logged(endpoint(event.remote)),
                    local_id=Logged(event.local_id),
                    remote_id=event.remote_id,
                    spi_i=event.spi_i.hex(),
                    spi_r=event.spi_r.hex(),
                    proposal=Logged(event.proposal),
                    nat=Logged(yes_no(event.nat_detected)),
                )
            case ev.ChildSaEstablished():
                record = self.d.sas.get(event.ike_sa)
                child = record.child(event.spi_in) if record is not None else None
                installed = child.installed if child is not None else None
                report(
                    "child-established",
                    connection=event.connection,
                    child=event.child,
                    ike_sa=Logged(event.ike_sa),
                    mode=Logged(event.mode),
                    spi_in=spi(event.spi_in),
                    spi_out=spi(event.spi_out),
                    proposal=Logged(event.proposal),
                    encap=Logged(yes_no(event.encap)),
                    offload=Logged(installed.offload if installed is not None else "none"),
                    local_ts=Logged(",".join(child.local_ts) if child else ""),
                    remote_ts=Logged(",".join(child.remote_ts) if child else ""),
                )
            case ev.ChildSaFailed():
                report(
                    "child-failed",
                    logging.WARNING,
                    connection=event.connection,
                    child=event.child,
                    ike_sa=Logged(event.ike_sa),
                    reason=event.reason,
                )
            case ev.ChildSaRekeyed():
                new = event.new
                report(
                    "child-rekeyed",
                    connection=event.connection,
                    child=event.child,
                    ike_sa=Logged(event.ike_sa),
                    spi_in=spi(new.spi_in),
                    spi_out=spi(new.spi_out),
                    old_spi_in=spi(event.old_spi_in),
                    old_spi_out=spi(event.old_spi_out),
                    proposal=Logged(new.proposal),
                    outbound=Logged("new" if event.outbound else "old"),
                )
            case ev.IkeSaRekeyed():
                report(
                    "ike-rekeyed",
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    spi_i=event.spi_i.hex(),
                    spi_r=event.spi_r.hex(),
                    old_spi_i=Logged(event.old_spi_i.hex()),
                    old_spi_r=Logged(event.old_spi_r.hex()),
                    proposal=Logged(event.proposal),
                )
            case ev.ChildSaDeleted():
                if self.d.children.retiring(event.spi_in):  # an old SA after its rekey
                    report(
                        "child-retiring",
                        logging.DEBUG,
                        connection=event.connection,
                        spi_in=spi(event.spi_in),
                    )
                    return
                report(
                    "child-deleted",
                    connection=event.connection,
                    child=event.child,
                    ike_sa=Logged(event.ike_sa),
                    spi_in=spi(event.spi_in),
                    spi_out=spi(event.spi_out),
                    reason=event.reason,
                )
            case ev.IkeSaDeleted():
                report(
                    "ike-deleted",
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    spi_i=Logged(event.spi_i.hex()),
                    spi_r=Logged(event.spi_r.hex()),
                    reason=event.reason,
                )
            case ev.IkeSaRedirected():
                report(
                    "ike-redirected",
                    connection=event.connection,
                    role=role(event.initiator),
                    phase=event.phase,
                    ike_sa=event.ike_sa,
                    remote=Logged(endpoint(event.remote)),
                    remote_addr=Published(event.remote[0]),
                    gateway=event.gateway,
                    new_ike_sa=event.new_ike_sa if event.initiator else None,
                )
            case ev.DpdFailed():
                report(
                    "dpd-failed",
                    logging.WARNING,
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    remote=Logged(endpoint(event.remote)),
                    remote_addr=Published(event.remote[0]),
                    actions=LogAs(
                        ",".join(f"{c}:{a}" for c, a in event.actions) or "-", dict(event.actions)
                    ),
                )
            case ev.IkeSaFailed():
                report(
                    "ike-failed",
                    logging.WARNING,
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    remote=Logged(endpoint(event.remote)),
                    remote_addr=Published(event.remote[0]),
                    reason=event.reason,
                    detail=LogAs(repr(event.detail), event.detail),
                )
            case ev.IkeSaMigrateFailed():
                report(
                    "ike-migrate-failed",
                    logging.WARNING,
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    local=Logged(endpoint(event.local)),
                    remote=Logged(endpoint(event.remote)),
                    local_addr=Published(event.local[0]),
                    remote_addr=Published(event.remote[0]),
                    reason=event.reason,
                )
            case ev.AdditionalAddressesUpdated():
                report(
                    "peer-addresses",
                    connection=event.connection,
                    ike_sa=event.ike_sa,
                    additional=",".join(event.additional_addrs) or "-",
                )
            case ev.IkeSaMigrated():
                pass  # reported by the data plane's feature, which moved the Child SAs
            case _:
                report("engine-event-ignored", logging.DEBUG, type=type(event).__name__)
