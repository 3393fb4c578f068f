"""RADIUS for EAP pass-through (RFC 2865, RFC 3579): a sans-IO codec (codec.py), the
per-conversation EAP relay logic (eap.py) and an asyncio client (client.py)."""

from gateway.radius.client import RadiusClient, RadiusServer, RadiusStats
from gateway.radius.codec import RadiusDecodeError, RadiusError
from gateway.radius.eap import RadiusEapReply, RadiusEapSession

__all__ = [
    "RadiusClient",
    "RadiusDecodeError",
    "RadiusEapReply",
    "RadiusEapSession",
    "RadiusError",
    "RadiusServer",
    "RadiusStats",
]
