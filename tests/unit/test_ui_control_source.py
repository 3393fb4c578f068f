"""The console's adapter over the real control client and server (gateway.control) on a
unix socket: replies pass through, refusals become SourceRefused with the contract's code,
a vanished daemon becomes SourceDisconnected, events arrive through subscribe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.control.protocol import ControlError
from gateway.control.server import ControlServer
from tests.support.observability import synthetic_ike_sas
from ui.control_source import socket_connector
from ui.source import SourceDisconnected, SourceRefused


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def list_conns(self) -> list[dict[str, Any]]:
        return [{"name": "conn-0", "children": []}]

    def list_sas(self) -> list[dict[str, Any]]:
        return synthetic_ike_sas(2, tick=3)

    def stats(self) -> dict[str, Any]:
        return {"uptime": 5, "version": "0.1.0", "child_sas": 2}

    async def initiate(self, name: str, timeout: float) -> Any:
        self.calls.append(("initiate", name))
        if name != "conn-0":
            raise ControlError("unknown-connection", f"no connection named {name}")
        return {"ok": name}

    async def terminate(self, name: str, timeout: float) -> Any:
        self.calls.append(("terminate", name))
        return None

    async def rekey(self, name: str, timeout: float) -> Any:
        raise ControlError("failed", "rekey: not now")

    async def reload(self) -> Any:
        self.calls.append(("reload", ""))
        return None

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        raise ControlError("failed", "migrate: not here")

    async def redirect(self, name: str, to: str, timeout: float) -> Any:
        raise ControlError("failed", "redirect: not here")


async def test_adapter_over_the_real_control_socket(tmp_path: Path) -> None:
    backend = Backend()
    server = ControlServer(backend, tmp_path / "ctl.sock")
    await server.start()
    try:
        source = await socket_connector(tmp_path / "ctl.sock")()
        assert await source.list_sas() == synthetic_ike_sas(2, tick=3)
        assert (await source.list_conns())[0]["name"] == "conn-0"
        assert (await source.stats())["child_sas"] == 2
        assert await source.initiate("conn-0") == {"ok": "conn-0"}
        with pytest.raises(SourceRefused) as refused:
            await source.initiate("nope")
        assert refused.value.code == "unknown-connection"
        assert str(refused.value) == "no connection named nope"
        with pytest.raises(SourceRefused, match="rekey: not now"):
            await source.rekey("conn-0.net-0")
        await source.terminate("conn-0")
        await source.reload()
        assert backend.calls[-2:] == [("terminate", "conn-0"), ("reload", "")]

        events = await source.subscribe()
        server.publish("child-established", connection="conn-0", child="net-0")
        event = await asyncio.wait_for(anext(events), 5)
        assert (event["type"], event["connection"]) == ("child-established", "conn-0")

        await server.close()  # the daemon goes away
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(events), 5)
        with pytest.raises(SourceDisconnected):
            await source.list_sas()
        await source.close()
    finally:
        await server.close()
    with pytest.raises(SourceDisconnected, match="cannot connect"):
        await socket_connector(tmp_path / "ctl.sock", timeout=2)()


class OddBackend(Backend):
    def stats(self) -> Any:
        return ["not", "an", "object"]


async def test_a_reply_of_the_wrong_shape_is_refused_not_raised(tmp_path: Path) -> None:
    server = ControlServer(OddBackend(), tmp_path / "ctl.sock")
    await server.start()
    try:
        source = await socket_connector(tmp_path / "ctl.sock")()
        with pytest.raises(SourceRefused) as refused:
            await source.stats()
        assert refused.value.code == "bad-reply"
        assert len(await source.list_sas()) == 1  # the connection is still usable
        await source.close()
    finally:
        await server.close()
