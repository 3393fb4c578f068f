"""The control API's server: serves a `ControlBackend` on a unix socket (mode 0600).

`ControlServer` serves the daemon's state (or the workers' supervisor, or a fake in
tests). Every request gets exactly one reply; a malformed request gets a `bad-request`
error and the connection (and the server) carry on. Requests on one connection are
answered in order; connections are independent. `publish()` pushes an event to every
subscribed connection. `serve_peer()` serves the supervisor's link to a worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from gateway.control.protocol import (
    BAD_REQUEST,
    FAILED,
    MAX_LINE,
    SUBSCRIBER_QUEUE,
    ControlError,
    Request,
    RequestError,
    encode,
    error_reply,
    make_event,
    parse_request,
)
from gateway.errors import GatewayError

log = logging.getLogger("gateway.control")


class ControlBackend(Protocol):
    """What the server serves. Raise ControlError for refusals the user should see.
    list-conns, list-sas and stats may also be answered asynchronously. A backend that
    reads its per-SA counters in the background may also define `async
    fresh_counters()`: awaited before list-sas and stats (the daemon's one counter read
    per interval, gateway/daemon/traffic.py)."""

    def list_conns(self) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]: ...

    def list_sas(self) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]: ...

    def sa_changes(
        self, since: dict[str, Any] | None
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """list-sas with `since`: what changed after the cursor (protocol.full_changes
        when the backend keeps no cursor)."""
        ...

    def stats(self) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...

    async def initiate(self, name: str, timeout: float) -> Any: ...

    async def terminate(self, name: str, timeout: float) -> Any: ...

    async def rekey(self, name: str, timeout: float) -> Any: ...

    async def redirect(self, name: str, to: str, timeout: float) -> Any: ...

    async def reload(self) -> Any: ...

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any: ...


class _Subscriber:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.task: asyncio.Task[None] | None = None

    async def pump(self) -> None:
        while True:
            event = await self.queue.get()
            self.writer.write(encode(event))
            await self.writer.drain()


class ControlServer:
    """Serve `backend` on a unix socket at `path` (mode 0600, parent made 0700 if missing)."""

    def __init__(self, backend: ControlBackend, path: str | os.PathLike[str]) -> None:
        self.backend = backend
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._closing = False
        self._subscribers: set[_Subscriber] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.bad_requests = 0
        # awaited with the number of subscribed connections whenever one subscribes (before
        # its reply) or goes away: the workers' supervisor forwards events only when needed
        self.on_subscribers: Callable[[int], Awaitable[None]] | None = None

    async def start(self) -> None:
        self._closing = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise GatewayError(f"control socket {self.path}: {exc.strerror}") from None
        _remove_stale_socket(self.path)
        # The socket is created 0600 (umask), so no other user can race to connect.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_LINE
            )
        except OSError as exc:
            raise GatewayError(
                f"cannot create control socket {self.path}: {exc.strerror}"
            ) from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            for sub in list(self._subscribers):
                sub.writer.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def publish(self, event_type: str, **fields: Any) -> None:
        """Push an event to every subscriber; one that cannot keep up is disconnected."""
        event = make_event(event_type, **fields)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("event=control-subscriber-dropped reason=queue-full")
                self._subscribers.discard(sub)
                sub.writer.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._closing:  # accepted just as we were closing
            writer.close()
            return
        self._handlers.add(task)
        sub: _Subscriber | None = None
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    # The peer half-closed after a last line without "\n": answer it too.
                    if exc.partial.strip():
                        reply, _ = await self._handle_line(exc.partial)
                        await self._reply(writer, reply)
                    break
                except asyncio.LimitOverrunError:
                    self.bad_requests += 1
                    reply = error_reply(None, BAD_REQUEST, f"request longer than {MAX_LINE} bytes")
                    await self._reply(writer, reply)
                    break  # cannot find the next request boundary reliably: hang up
                if not line.strip():
                    continue
                reply, subscribe = await self._handle_line(line)
                if subscribe and sub is None:
                    sub = _Subscriber(writer)
                    self._subscribers.add(sub)
                    if self.on_subscribers is not None:
                        await self.on_subscribers(len(self._subscribers))
                    await self._reply(writer, reply)
                    sub.task = asyncio.create_task(sub.pump())
                    continue
                await self._reply(writer, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if sub is not None:
                self._subscribers.discard(sub)
                if sub.task is not None:
                    sub.task.cancel()
                if self.on_subscribers is not None and not self._closing:
                    with contextlib.suppress(Exception):
                        await self.on_subscribers(len(self._subscribers))
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def serve_peer(self, sock: socket.socket) -> asyncio.Task[None]:
        """Serve one already connected stream socket: the supervisor's link to a worker
        process (gateway/workers/). Unlike the public socket, every request runs in
        its own task (replies carry their id, so a slow `initiate` does not hold up
        `list-sas`), and events are pushed between a `subscribe` and an `unsubscribe`
        (a command of this link only). The returned task ends when the peer closes."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        sub = _Subscriber(writer)
        sub.task = asyncio.create_task(sub.pump())
        return asyncio.create_task(self._serve_peer(reader, writer, sub))

    async def _serve_peer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sub: _Subscriber
    ) -> None:
        tasks: set[asyncio.Task[None]] = set()

        async def answer(line: bytes) -> None:
            toggle = _subscription_toggle(line)
            if toggle is not None:  # in arrival order: nothing awaited before this
                req_id, on = toggle
                if on:
                    self._subscribers.add(sub)
                else:
                    self._subscribers.discard(sub)
                reply = {"id": req_id, "ok": True, "result": {"subscribed": on}}
            else:
                reply, _ = await self._handle_line(line)
            with contextlib.suppress(ConnectionError):
                await self._reply(writer, reply)

        try:
            while line := await reader.readline():
                task = asyncio.create_task(answer(line))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, ValueError):
            pass
        finally:
            self._subscribers.discard(sub)
            if sub.task is not None:
                sub.task.cancel()
            for task in list(tasks):
                task.cancel()
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(encode(reply))
        await writer.drain()

    async def _handle_line(self, line: bytes) -> tuple[dict[str, Any], bool]:
        self.requests += 1
        try:
            req = parse_request(line)
        except RequestError as exc:
            self.bad_requests += 1
            return error_reply(exc.req_id, exc.code, exc.message), False
        except ControlError as exc:
            self.bad_requests += 1
            return error_reply(None, exc.code, exc.message), False
        try:
            result = await self._dispatch(req)
        except ControlError as exc:
            return error_reply(req.id, exc.code, exc.message), False
        except GatewayError as exc:
            return error_reply(req.id, FAILED, str(exc)), False
        except Exception as exc:  # the one boundary that keeps a backend bug from killing us
            log.exception("event=control-error cmd=%s error=%s", req.cmd, type(exc).__name__)
            return error_reply(req.id, FAILED, f"internal error ({type(exc).__name__})"), False
        return {"id": req.id, "ok": True, "result": result}, req.cmd == "subscribe"

    async def _dispatch(self, req: Request) -> Any:
        b = self.backend
        if req.cmd == "subscribe":
            return {"subscribed": True}
        sync: dict[str, Callable[[], Any]] = {
            "list-conns": b.list_conns,
            "list-sas": b.list_sas,
            "stats": b.stats,
        }
        if req.cmd == "list-sas" and "since" in req.args:
            sync["list-sas"] = partial(b.sa_changes, req.args["since"])
        if req.cmd in sync:
            fresh = getattr(b, "fresh_counters", None) if req.cmd != "list-conns" else None
            if fresh is not None:
                await fresh()
            result = sync[req.cmd]()
            # a backend may answer these asynchronously (the workers' supervisor asks them)
            return await result if inspect.isawaitable(result) else result
        if req.cmd == "reload":
            return await b.reload()
        if req.cmd == "migrate":
            return await b.migrate(
                req.args["name"],
                req.args.get("local_addr"),
                req.args.get("remote_addr"),
                float(req.args.get("timeout", 30.0)),
            )
        if req.cmd == "redirect":
            timeout = float(req.args.get("timeout", 30.0))
            return await b.redirect(req.args["name"], req.args["to"], timeout)
        actions: dict[str, Callable[[str, float], Awaitable[Any]]] = {
            "initiate": b.initiate,
            "terminate": b.terminate,
            "rekey": b.rekey,
        }
        return await actions[req.cmd](req.args["name"], float(req.args.get("timeout", 30.0)))


def _subscription_toggle(line: bytes) -> tuple[int, bool] | None:
    """(id, on) for a `subscribe`/`unsubscribe` request on a peer link, else None."""
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("cmd") not in ("subscribe", "unsubscribe"):
        return None
    req_id = data.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, int):
        return None
    return req_id, data["cmd"] == "subscribe"


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse to steal a live daemon's socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise GatewayError(f"control socket {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise GatewayError(f"control socket {path}: {exc.strerror}") from None
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise GatewayError(f"control socket {path} is in use (is another gateway running?)")
