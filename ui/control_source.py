"""`GatewaySource` over the daemon's control socket (gateway.control.client.ControlClient)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway.control.client import ControlClient
from gateway.control.protocol import ControlConnectionError, ControlError
from ui.source import Connector, GatewaySource, SourceDisconnected, SourceRefused

T = TypeVar("T")


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except ControlError as exc:
        raise SourceRefused(exc.code, exc.message) from None
    except (ControlConnectionError, ConnectionError) as exc:
        raise SourceDisconnected(str(exc) or "control connection lost") from None
    except (TypeError, ValueError) as exc:  # a reply of the wrong shape (e.g. stats not an object)
        raise SourceRefused("bad-reply", f"unexpected reply from the gateway: {exc}") from None


class ControlSource:
    """Adapter: ControlClient's errors become SourceRefused / SourceDisconnected."""

    def __init__(self, client: ControlClient) -> None:
        self._client = client

    async def list_conns(self) -> list[dict[str, Any]]:
        return await _translated(self._client.list_conns())

    async def list_sas(self) -> list[dict[str, Any]]:
        return await _translated(self._client.list_sas())

    async def stats(self) -> dict[str, Any]:
        return await _translated(self._client.stats())

    async def initiate(self, name: str) -> Any:
        return await _translated(self._client.initiate(name))

    async def terminate(self, name: str) -> Any:
        return await _translated(self._client.terminate(name))

    async def rekey(self, name: str) -> Any:
        return await _translated(self._client.rekey(name))

    async def reload(self) -> Any:
        return await _translated(self._client.reload())

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        return await _translated(self._client.subscribe())

    async def close(self) -> None:
        await self._client.close()


def socket_connector(path: str | os.PathLike[str], timeout: float = 5.0) -> Connector:
    """A Connector opening a new control connection to the daemon at `path`."""

    async def connect() -> GatewaySource:
        client = await _translated(ControlClient.connect(path, timeout=timeout))
        return ControlSource(client)

    return connect


_check: Callable[[ControlClient], GatewaySource] = ControlSource  # Protocol conformance
