"""The strongSwan peer helper lives in gateway.strongswan (the lab uses it too)."""

from gateway.strongswan import (
    CHARON,
    LIBIPSEC_PLUGINS,
    NETLINK_PLUGINS,
    SWANCTL,
    StrongSwan,
    StrongSwanError,
    parse_vici_raw,
)

__all__ = [
    "CHARON",
    "LIBIPSEC_PLUGINS",
    "NETLINK_PLUGINS",
    "SWANCTL",
    "StrongSwan",
    "StrongSwanError",
    "parse_vici_raw",
]
