"""The console against real daemons (`gateway run`, data plane `none`, two namespaces):
it shows the daemon's SA, rekeys, terminates (with confirmation) and initiates through the
control socket, logs the daemon's events, and survives the daemon restarting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import Gateway
from tests.support.pair import start_pair, west_config
from ui.app import GatewayApp
from ui.control_source import socket_connector


async def until(app: GatewayApp, what: str, cond: Callable[[], bool], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        await app.tick()
        if cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"timed out waiting for {what}; rows "
        f"{[(r.name, r.state, r.spi_in) for r in app.model.view]}, log "
        f"{list(app.event_log.lines)}"
    )


def names(app: GatewayApp) -> dict[str, str]:
    return {r.name: r.state for r in app.model.view}


async def test_console_drives_a_real_daemon(
    netns_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = netns_pair
    west, _ = start_pair(a, b, tmp_path)

    app = GatewayApp(socket_connector(west.socket), label=str(west.socket), poll=False)
    async with app.run_test(size=(170, 40)) as pilot:
        await until(app, "the Child SA", lambda: names(app).get("east.net") == "INSTALLED")
        row = app.table.selected
        assert row is not None and row.name == "east.net"
        assert (row.peer, row.remote_id) == ("192.0.2.2", "gw-east")
        summary = app.summary_text().plain
        assert app.status == "connected" and "IKE SAs 1 established" in summary
        assert "data plane none" in summary
        old_spi = row.spi_in

        def rekey_answers() -> list[str]:
            own = (line[9:] for line in app.event_log.lines)  # without the HH:MM:SS stamp
            return [line for line in own if line.startswith("rekey east.net")]

        await pilot.press("r")
        await until(app, "the answer to rekey", lambda: bool(rekey_answers()))
        if rekey_answers() == ["rekey east.net: ok"]:  # a new inbound SPI replaces the old
            await until(
                app,
                "the rekeyed Child SA",
                lambda: any(
                    r.name == "east.net" and r.spi_in != old_spi and r.state == "INSTALLED"
                    for r in app.model.view
                ),
            )
        else:  # a daemon that refuses: its answer is shown, the console carries on
            (answer,) = rekey_answers()
            assert answer.startswith("rekey east.net failed: ") and answer.endswith(")")
            assert names(app).get("east.net") == "INSTALLED"

        await pilot.press("T", "y")  # terminate the connection, confirmed
        await until(app, "the connection down", lambda: names(app) == {"east": "down"})
        await until(
            app,
            "an ike-deleted event",
            lambda: any("ike-deleted" in line for line in app.event_log.lines),
        )

        await pilot.press("i")  # the idle connection row: initiate it again
        await until(app, "the SA back", lambda: names(app).get("east.net") == "INSTALLED")

        # the daemon restarts: the console shows it and reconnects by itself
        assert west.stop() == 0
        await until(app, "disconnected", lambda: app.status == "disconnected")
        assert "DISCONNECTED" in app.summary_text().plain
        west = Gateway.start(a, tmp_path, "west", west_config(tmp_path))
        await until(
            app,
            "reconnected with the SA",
            lambda: app.status == "connected" and names(app).get("east.net") == "INSTALLED",
            timeout=60,
        )
    assert west.stop() == 0
