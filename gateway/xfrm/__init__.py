"""Kernel SA backend: the XFRM netlink family and the Child SA manager (docs/xfrm.md)."""

from gateway.xfrm.errors import XfrmError
from gateway.xfrm.events import (
    Acquire,
    EventsLost,
    Migrate,
    PolicyExpired,
    SaExpired,
    XfrmEvent,
    XfrmEventReader,
)
from gateway.xfrm.manager import (
    ChildSaCounters,
    InstalledChildSa,
    OwnedRange,
    ReconcileReport,
    XfrmManager,
)
from gateway.xfrm.model import PolicyInfo, SaInfo
from gateway.xfrm.offload import OffloadCapabilities, offload_capabilities
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
    "OffloadCapabilities",
    "OwnedRange",
    "PolicyExpired",
    "PolicyInfo",
    "ReconcileReport",
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
    "replay_window_for",
]
