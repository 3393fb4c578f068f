"""Kernel SA backend: the XFRM netlink family and the Child SA manager (docs/xfrm.md)."""

from gateway.xfrm.errors import XfrmError
from gateway.xfrm.events import (
    COUNTER_GROUPS,
    Acquire,
    EventsLost,
    Migrate,
    PolicyExpired,
    SaDeleted,
    SaExpired,
    XfrmEvent,
    XfrmEventReader,
)
from gateway.xfrm.manager import (
    ChildSaCounters,
    InstalledChildSa,
    OffloadAttempt,
    OffloadOutcome,
    OwnedRange,
    ReconcileReport,
    XfrmManager,
    probe_offload,
)
from gateway.xfrm.model import PolicyInfo, SaInfo
from gateway.xfrm.offload import (
    OffloadCapabilities,
    OffloadProbe,
    offload_capabilities,
    route_device,
)
from gateway.xfrm.scan import SaCounters
from gateway.xfrm.spec import (
    DEFAULT_REPLAY_WINDOW,
    ChildSaSpec,
    EspTransform,
    Lifetime,
    Mark,
    SaKeys,
    TrafficSelector,
    UdpEncap,
    replay_window_for,
)

__all__ = [
    "COUNTER_GROUPS",
    "Acquire",
    "ChildSaCounters",
    "ChildSaSpec",
    "DEFAULT_REPLAY_WINDOW",
    "EspTransform",
    "EventsLost",
    "InstalledChildSa",
    "Lifetime",
    "Mark",
    "Migrate",
    "OffloadAttempt",
    "OffloadCapabilities",
    "OffloadOutcome",
    "OffloadProbe",
    "OwnedRange",
    "PolicyExpired",
    "PolicyInfo",
    "ReconcileReport",
    "SaCounters",
    "SaDeleted",
    "SaExpired",
    "SaInfo",
    "SaKeys",
    "TrafficSelector",
    "UdpEncap",
    "XfrmError",
    "XfrmEvent",
    "XfrmEventReader",
    "XfrmManager",
    "offload_capabilities",
    "probe_offload",
    "replay_window_for",
    "route_device",
]
