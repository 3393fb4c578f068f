"""The strongSwan peer helper lives in gateway.lab.strongswan (the lab runs charon with it)."""

from gateway.lab.strongswan import (
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
