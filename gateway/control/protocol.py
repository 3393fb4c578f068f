"""The control API's wire protocol: newline-delimited JSON over a unix stream socket.

Protocol (the team's shared contract; extend it, don't change it):

    request  {"id": <int>, "cmd": "<name>", "args": {...}}
    reply    {"id": <same>, "ok": true, "result": <any>}
             {"id": <same>, "ok": false, "error": {"code": "<kebab-case>", "message": "..."}}
    event    {"event": {"type": "<kebab>", "time": <unix float>, ...}}   (after `subscribe`)

This module holds what both ends share: the commands, the error codes, `ControlError`,
`parse_request` (every check a request gets) and the line encoding. The server is
gateway/control/server.py, the client gateway/control/client.py.
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import GatewayError

DEFAULT_CONTROL_SOCKET: Final = "/run/gateway/control.sock"

MAX_LINE: Final = 1 << 16  # bytes per request line; longer requests are refused
SUBSCRIBER_QUEUE: Final = 4096  # events buffered per slow subscriber before it is dropped
NAME_COMMANDS: Final = ("initiate", "terminate", "rekey", "redirect")
PLAIN_COMMANDS: Final = ("list-conns", "list-sas", "reload", "stats", "subscribe")
# migrate {name, local_addr?, remote_addr?, timeout?}: MOBIKE move (RFC 4555)
ADDRESS_COMMANDS: Final = ("migrate",)
COMMANDS: Final = PLAIN_COMMANDS + NAME_COMMANDS + ADDRESS_COMMANDS

# Error codes of the contract.
BAD_REQUEST: Final = "bad-request"
UNKNOWN_COMMAND: Final = "unknown-command"
UNKNOWN_CONNECTION: Final = "unknown-connection"
UNKNOWN_SA: Final = "unknown-sa"
FAILED: Final = "failed"


class ControlError(GatewayError):
    """A request the server refused; `code` is the contract's kebab-case code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlConnectionError(GatewayError):
    """The control socket cannot be reached, or the daemon went away mid-conversation."""


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Decode and check one request line; ControlError(bad-request|unknown-command)."""
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(BAD_REQUEST, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError(BAD_REQUEST, "a request is a JSON object")
    req_id = data.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, int):
        raise ControlError(BAD_REQUEST, "'id' must be an integer")
    cmd = data.get("cmd")
    args = data.get("args", {})
    extra = sorted(set(data) - {"id", "cmd", "args"})
    if extra:
        raise _with_id(req_id, BAD_REQUEST, f"unknown request field(s): {', '.join(extra)}")
    if not isinstance(cmd, str):
        raise _with_id(req_id, BAD_REQUEST, "'cmd' must be a string")
    if cmd not in COMMANDS:
        raise _with_id(
            req_id, UNKNOWN_COMMAND, f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}"
        )
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _with_id(req_id, BAD_REQUEST, "'args' must be an object")
    allowed = {"name", "timeout"} if cmd in NAME_COMMANDS + ADDRESS_COMMANDS else set()
    if cmd in ADDRESS_COMMANDS:
        allowed |= {"local_addr", "remote_addr"}
    if cmd == "redirect":
        allowed.add("to")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise _with_id(req_id, BAD_REQUEST, f"{cmd}: unknown argument(s): {', '.join(unknown)}")
    for key in ("local_addr", "remote_addr"):
        value = args.get(key)
        if value is not None and not _is_ip(value):
            raise _with_id(req_id, BAD_REQUEST, f"{cmd}: {key!r} must be an IP address")
    if cmd in NAME_COMMANDS + ADDRESS_COMMANDS:
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise _with_id(req_id, BAD_REQUEST, f'{cmd} needs "name": "connection[.child]"')
        timeout = args.get("timeout", 30.0)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout <= 3600)
        ):
            raise _with_id(req_id, BAD_REQUEST, "'timeout' must be seconds in (0, 3600]")
    if cmd == "redirect":
        to = args.get("to")
        if not isinstance(to, str) or not to:
            raise _with_id(
                req_id, BAD_REQUEST, 'redirect needs "to": the new gateway\'s address or name'
            )
    return Request(req_id, cmd, args)


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class RequestError(ControlError):
    """A bad request whose id could be read: the reply carries it."""

    def __init__(self, req_id: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.req_id = req_id


def _with_id(req_id: int, code: str, message: str) -> RequestError:
    return RequestError(req_id, code, message)


def encode(obj: Any) -> bytes:
    """One protocol line (requests, replies and events alike)."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def error_reply(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def make_event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"event": {"type": event_type, "time": time.time(), **fields}}
