"""One `report(event, **fields)`: what the daemon tells its log and its control subscribers.

Every event the daemon reports is one line in the log, `event=NAME key=value ...` (docs/
daemon.md, "Logs"), and, when NAME is one of the control API's event types (PUBLISHED),
the same fields are published to `subscribe`d clients (docs/daemon.md, "Events"). A
report at ERROR level that carries a `message` is also published as an `error` event.

Most fields mean the same in both; where the log wants more (ports, proposals, reasons
quoted) or the event wants a different shape, a field is wrapped: `Logged(value)` goes to
the log line only, `Published(value)` to the event only, `LogAs(text, value)` is written
as `text` in the log and published as `value`. In the log, None is written
"-"; in events it stays null. Keys and PSKs are never a field.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

log = logging.getLogger("gateway.daemon")

# The control API's event types (published under their own name; docs/daemon.md).
PUBLISHED: Final = frozenset(
    {
        "ike-established",
        "ike-rekeyed",
        "ike-deleted",
        "ike-failed",
        "ike-retry",
        "ike-redirected",
        "ike-migrated",
        "ike-migrate-failed",
        "child-established",
        "child-rekeyed",
        "child-failed",
        "child-deleted",
        "child-expiring",
        "dpd-failed",
        "config-reloaded",
    }
)


class Logged:
    """A field for the log line only."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Published:
    """A field for the published event only."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class LogAs:
    """A field written one way in the log (`text`) and published as `value`."""

    __slots__ = ("text", "value")

    def __init__(self, text: str, value: Any) -> None:
        self.text = text
        self.value = value


class Publisher(Protocol):
    def publish(self, event_type: str, **fields: Any) -> None: ...


class Reporter:
    """`report()` bound to the daemon's control server (its subscribers)."""

    __slots__ = ("control",)

    def __init__(self, control: Publisher) -> None:
        self.control = control

    def report(self, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
        """Log `event=NAME key=value ...` and publish the event if subscribers get it."""
        if log.isEnabledFor(level):
            words = [f"event={event}"]
            for key, value in fields.items():
                if isinstance(value, Published):
                    continue
                if isinstance(value, Logged):
                    value = value.value
                elif isinstance(value, LogAs):
                    value = value.text
                words.append(f"{key}={'-' if value is None else value}")
            log.log(level, " ".join(words))
        publish_as = event if event in PUBLISHED else None
        if publish_as is None and level >= logging.ERROR and "message" in fields:
            publish_as = "error"
        if publish_as is not None:
            self.control.publish(
                publish_as,
                **{
                    k: v.value if isinstance(v, Published | LogAs) else v
                    for k, v in fields.items()
                    if not isinstance(v, Logged)
                },
            )


# ------------------------------------------------------------------------ the words used


def spi(value: int) -> str:
    """A Child SA's SPI as the logs, events and list-sas write it (8 hex digits)."""
    return f"{value:08x}"


def endpoint(addr: tuple[str, int] | None) -> str:
    """An (address, port) pair for the log: 192.0.2.1:500, [2001:db8::1]:4500, or -."""
    if addr is None:
        return "-"
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def role(initiator: bool) -> str:
    return "initiator" if initiator else "responder"
