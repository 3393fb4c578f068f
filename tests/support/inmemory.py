"""Two in-process daemons joined in memory (no sockets: what one sends, the other
receives on the running event loop), with real IKE engines, for the unit tests of what
the daemon does between two gateways (rekeys, traps, start/close actions)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tests.support.daemon import PSK

if TYPE_CHECKING:
    from gateway.control.client import ControlClient
    from gateway.daemon import Daemon
    from gateway.dataplane.base import Dataplane


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


D = TypeVar("D", bound="Dataplane")


@dataclasses.dataclass
class Pair(Generic[D]):
    """Two daemons joined in memory and west's control client."""

    west: Daemon
    east: Daemon
    dp_west: D
    dp_east: D
    client: ControlClient  # west's control socket


@contextlib.asynccontextmanager
async def started_pair(
    tmp_path: Path, dp_west: D, dp_east: D, gateway_extra: str = ""
) -> AsyncIterator[Pair[D]]:
    """West (127.0.0.1, start_action "start") and east (127.0.0.2, responder) over the
    given data planes, joined in memory and started (east first), with a control client
    on west; all closed after. `gateway_extra`: more `[gateway]` keys for both."""
    from gateway.config.reader import parse_config
    from gateway.control.client import ControlClient
    from gateway.daemon import Daemon

    daemons = []
    for name, local, remote, start, dp in (
        ("west", "127.0.0.1", "127.0.0.2", "start", dp_west),
        ("east", "127.0.0.2", "127.0.0.1", "none", dp_east),
    ):
        text = config_text(tmp_path / f"{name}.sock", local, remote, start)
        text = text.replace("[gateway]\n", f"[gateway]\n{gateway_extra}\n", 1)
        daemons.append(Daemon(parse_config(text, f"{name}.toml"), dataplane=dp))
    west, east = daemons
    link_in_memory(west, east)
    await east.start()
    await west.start()
    client = await ControlClient.connect(tmp_path / "west.sock")
    try:
        yield Pair(west, east, dp_west, dp_east, client)
    finally:
        await client.close()
        await west.shutdown()
        await east.shutdown()


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
