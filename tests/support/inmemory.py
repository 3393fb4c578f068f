"""Two in-process daemons joined in memory (no sockets: what one sends, the other
receives on the running event loop), with real IKE engines, for the unit tests of what
the daemon does between two gateways (rekeys, traps, start/close actions)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.daemon import PSK

if TYPE_CHECKING:
    from gateway.daemon import Daemon


def config_text(
    socket: Path,
    local: str,
    remote: str,
    start: str,
    *,
    psk: str = PSK,
    dataplane: str = "none",
    child_extra: str = "",
) -> str:
    """One side's configuration: connection "east" with Child "net" between `local` and
    `remote` (10.<last digit>.0.0/24 behind each), ephemeral ports."""
    return f"""
[gateway]
listen = ["127.0.0.1"]
port = 0
port_nat_t = 0
control_socket = "{socket}"
metrics_listen = "off"
dataplane = "{dataplane}"

[connections.east]
local_addrs = ["{local}"]
remote_addrs = ["{remote}"]
local = {{ auth = "psk", id = "{local}" }}
remote = {{ auth = "psk", id = "{remote}" }}
psk = "{psk}"

[connections.east.children.net]
local_ts = ["10.{local[-1]}.0.0/24"]
remote_ts = ["10.{remote[-1]}.0.0/24"]
esp_proposals = ["aes256gcm16-x25519"]
start_action = "{start}"
{child_extra}
"""


def link_in_memory(a: Daemon, b: Daemon) -> None:
    """Join two in-process daemons without sockets: what one sends is delivered to the
    other on the running event loop, as if it came from the sender's address."""
    loop = asyncio.get_running_loop()
    for src, dst in ((a, b), (b, a)):

        def send(
            data: bytes, local: tuple[str, int], remote: tuple[str, int], dst: Daemon = dst
        ) -> bool:
            loop.call_soon(dst.on_datagram, data, remote, local)
            return True

        src.transport.send = send  # type: ignore[method-assign]


async def until(what: str, cond: Callable[[], Any]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def children(d: Daemon) -> list[dict[str, Any]]:
    """The Child SAs of `d`'s established IKE SAs, as list-sas shows them."""
    return [c for sa in d.list_sas() if sa["state"] == "ESTABLISHED" for c in sa["children"]]
