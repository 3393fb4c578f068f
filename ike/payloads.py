"""Finding payloads in a decoded message: the first of a kind, the notifies, the error.

Every exchange looks into a message's payload list the same few ways; these are them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ike.codec import Notify, Payload
from ike.constants import ERROR_NOTIFY_MAX, NotifyType

_P = TypeVar("_P")


def first(payloads: Sequence[Payload], cls: type[_P], kind: int | None = None) -> _P | None:
    """The first payload of class `cls` (and payload type `kind`, e.g. IDi or TSr)."""
    for p in payloads:
        if type(p) is cls and (kind is None or p.payload_type == kind):  # type: ignore[attr-defined]
            return p  # type: ignore[return-value]
    return None


def notifies(payloads: Sequence[Payload]) -> list[Notify]:
    return [p for p in payloads if type(p) is Notify]


def first_notify(payloads: Sequence[Payload], ntype: int) -> Notify | None:
    return next((n for n in notifies(payloads) if n.type == ntype), None)


def error_notify(payloads: Sequence[Payload]) -> Notify | None:
    """The first error NOTIFY (types below 16384, RFC 7296 §3.10.1)."""
    return next((n for n in notifies(payloads) if n.type <= ERROR_NOTIFY_MAX), None)


def notify_type(value: int) -> NotifyType:
    """A peer's NOTIFY type as ours; one we do not know counts as INVALID_SYNTAX."""
    try:
        return NotifyType(value)
    except ValueError:
        return NotifyType.INVALID_SYNTAX
