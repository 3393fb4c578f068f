"""What the console talks to: the gateway's control API, seen through a small Protocol.

The app only ever holds a `GatewaySource`; `connect` (a `Connector`) makes a fresh one,
which is how the console survives a daemon restart: when a call raises
`SourceDisconnected`, the app drops the source and calls the connector again later.
`ui.control_source` adapts `gateway.control.client.ControlClient`; tests use an in-memory fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from gateway.errors import GatewayError


class SourceDisconnected(GatewayError):
    """The gateway cannot be reached (not running, restarting, socket gone)."""


class SourceRefused(GatewayError):
    """The gateway answered a request with an error (unknown connection, failed...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GatewaySource(Protocol):
    """The control API commands the console uses (see the control API contract).

    Every method raises `SourceDisconnected` when the gateway went away and
    `SourceRefused` when it answered with an error."""

    async def list_conns(self) -> list[dict[str, Any]]: ...

    async def list_sas(self) -> list[dict[str, Any]]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def initiate(self, name: str) -> Any: ...

    async def terminate(self, name: str) -> Any: ...

    async def rekey(self, name: str) -> Any: ...

    async def reload(self) -> Any: ...

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Start receiving events; the iterator ends when the connection closes."""
        ...

    async def close(self) -> None: ...


Connector = Callable[[], Awaitable[GatewaySource]]
