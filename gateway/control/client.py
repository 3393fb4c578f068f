"""The control API's client (`gateway ctl`, the console, the lab, the workers' supervisor).

`async with await ControlClient.connect(path) as c: await c.list_sas()`: it matches
replies to requests by id and hands pushed events to `events()`. It imports nothing of
the daemon, so a client process stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from typing import Any, Final

from gateway.control.protocol import FAILED, ControlConnectionError, ControlError, encode

_EOF: Final[dict[str, Any]] = {}


class ControlClient:
    """Async client: `async with await ControlClient.connect(path) as c: await c.list_sas()`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._closed: BaseException | None = None
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], timeout: float = 5.0) -> ControlClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=1 << 26), timeout
            )
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or "timed out"
            raise ControlConnectionError(
                f"cannot connect to control socket {path}: {reason} (is the gateway running?)"
            ) from None
        return cls(reader, writer)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read_loop(self) -> None:
        reason: BaseException = ControlConnectionError("the gateway closed the control connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    reason = ControlConnectionError("the gateway sent a line that is not JSON")
                    break
                if isinstance(msg, dict) and "event" in msg:
                    self._events.put_nowait(msg["event"])
                    continue
                reply_id = msg.get("id") if isinstance(msg, dict) else None
                fut = self._pending.pop(reply_id, None) if isinstance(reply_id, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ConnectionError, ValueError) as exc:
            reason = ControlConnectionError(f"control connection lost: {exc}")
        finally:
            self._closed = reason
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(reason)
            self._pending.clear()
            self._events.put_nowait(_EOF)

    async def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send a request, wait for its reply; ControlError if the server refused it."""
        if self._closed is not None:
            raise self._closed
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        request: dict[str, Any] = {"id": req_id, "cmd": cmd}
        if args:
            request["args"] = args
        try:
            self._writer.write(encode(request))
            await self._writer.drain()
        except ConnectionError as exc:
            self._pending.pop(req_id, None)
            raise ControlConnectionError(f"control connection lost: {exc}") from None
        reply = await fut
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise ControlError(str(error.get("code", FAILED)), str(error.get("message", "failed")))

    async def list_conns(self) -> list[dict[str, Any]]:
        return list(await self.call("list-conns"))

    async def list_sas(self) -> list[dict[str, Any]]:
        return list(await self.call("list-sas"))

    async def stats(self) -> dict[str, Any]:
        return dict(await self.call("stats"))

    async def initiate(self, name: str, timeout: float = 30.0) -> Any:
        return await self.call("initiate", {"name": name, "timeout": timeout})

    async def terminate(self, name: str, timeout: float = 30.0) -> Any:
        return await self.call("terminate", {"name": name, "timeout": timeout})

    async def rekey(self, name: str, timeout: float = 30.0) -> Any:
        return await self.call("rekey", {"name": name, "timeout": timeout})

    async def redirect(self, name: str, to: str, timeout: float = 30.0) -> Any:
        return await self.call("redirect", {"name": name, "to": to, "timeout": timeout})

    async def reload(self) -> Any:
        return await self.call("reload")

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield events until the connection closes."""
        await self.call("subscribe")
        return self.events()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            if event is _EOF:
                return
            yield event
