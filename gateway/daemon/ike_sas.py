"""The IKE side of the SA table, kept in step with the engine's events: the feature
manager that records each IKE SA established, rekeyed, redirected, moved, deleted or
failed (its Child SAs are gateway/daemon/children.py's).
"""

from __future__ import annotations

from typing import Any

from gateway.daemon.feature import EventContext, Feature
from gateway.daemon.records import SaTable
from ike import events as ev


class IkeSas(Feature):
    """The IKE side of the SA table, from the engine's events."""

    def __init__(self, sas: SaTable) -> None:
        self.sas = sas

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.IkeSaEstablished():
                r = self.sas.ensure(event.ike_sa, event.connection, event.initiator)
                r.state = "ESTABLISHED"
                r.local, r.remote = event.local, event.remote
                r.local_id, r.remote_id = event.local_id, event.remote_id
                r.spi_i, r.spi_r = event.spi_i, event.spi_r
                r.proposal = event.proposal
                r.established_at = event.time
                r.rekey_at, r.expire_at = event.rekey_at, event.expire_at
                r.mobike, r.additional_addrs = event.mobike, event.additional_addrs
            case ev.IkeSaRekeyed() if ctx.sa is not None:
                r = ctx.sa
                r.spi_i, r.spi_r = event.spi_i, event.spi_r
                r.proposal = event.proposal
                r.rekey_at, r.expire_at = event.rekey_at, event.expire_at
                if event.initiator is not None:  # the rekey's initiator is the new SA's (§2.18)
                    r.initiator = event.initiator
            case ev.IkeSaRedirected(initiator=True):
                # the attempt (or the established SA, gone already) goes on as a new
                # attempt against the new gateway: a record of its own
                old = self.sas.pop(event.ike_sa, None)
                record = self.sas.ensure(event.new_ike_sa, event.connection, True)
                if old is not None:
                    record.started_at = old.started_at  # the handshake's duration counts on
            case ev.IkeSaMigrated() if ctx.sa is not None:
                r = ctx.sa
                r.local, r.remote = event.local, event.remote
                r.additional_addrs = event.additional_addrs
                r.moving_to = None
            case ev.IkeSaMigrateFailed() if ctx.sa is not None:
                ctx.sa.moving_to = None
            case ev.AdditionalAddressesUpdated() if ctx.sa is not None:
                ctx.sa.additional_addrs = event.additional_addrs
            case ev.IkeSaDeleted() | ev.IkeSaFailed():
                self.sas.pop(event.ike_sa, None)
        return None
