"""The console driven by Textual's Pilot against an in-memory gateway (FakeGateway):
state after key presses, actions and confirmations, disconnect/reconnect, events, and
text snapshots of the main screens (tests/unit/snapshots/*.txt; UPDATE_SNAPSHOTS=1 to
rewrite them after an intended change, then review the diff)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.command import CommandList
from textual.pilot import Pilot
from textual.widgets import Sparkline, Static

from tests.support.observability import FakeGateway, synthetic_ike_sas
from ui.app import ConfirmScreen, GatewayApp, HelpScreen

SNAPSHOTS = Path(__file__).parent / "snapshots"
NOW = 1_700_000_000.0
SIZE = (170, 40)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_app(gw: FakeGateway, clock: Clock | None = None, **kw: object) -> GatewayApp:
    return GatewayApp(gw.connector, label="fake.sock", poll=False, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def gateway(child_sas: int = 6, tick: int = 1) -> FakeGateway:
    gw = FakeGateway(synthetic_ike_sas(child_sas, tick=tick))
    gw.conns.append(
        {
            "name": "idle",
            "remote_addrs": ["203.0.113.9"],
            "remote_id": "idle.example",
            "ike_proposals": ["AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"],
        }
    )
    return gw


def widgets_text(app: GatewayApp) -> str:
    """The console's own content, region by region: summary, visible table, detail pane,
    event log. Snapshots compare this rather than the whole composited screen so that a
    Textual upgrade changing scrollbar or border glyphs does not break them."""
    detail = app.query_one("#detail-text", Static).render()
    parts = [
        "[summary]",
        app.summary_text().plain,
        "[table]",
        *(line.rstrip() for line in app.table.visible_text()),
        "[detail]",
        str(detail).rstrip(),
        "[sparklines]",
        f"in {app.query_one('#spark-in', Sparkline).data}",
        f"out {app.query_one('#spark-out', Sparkline).data}",
        "[events]",
        *app.event_log.lines,
    ]
    return "\n".join(parts) + "\n"


def screen_text(app: GatewayApp) -> str:
    # The compositor's strips are what the terminal would show (Textual has no public
    # plain-text export; its SVG export is the same content with styling).
    strips = app.screen._compositor.render_strips()
    return "\n".join(s.text.rstrip() for s in strips) + "\n"


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        if not os.environ.get("UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot {path.name}; run with UPDATE_SNAPSHOTS=1 and review it")
        path.write_text(text)
    assert text == path.read_text(), f"screen differs from {path.name}"


async def eventually(
    pilot: Pilot[None], what: str, cond: Callable[[], bool], timeout: float = 20
) -> None:
    """Let the app run until `cond` holds (generous: the CI machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def logged(app: GatewayApp) -> list[str]:
    """The event log without the HH:MM:SS stamps of the console's own lines."""
    return [
        line[9:] if line[2:3] == ":" and line[5:6] == ":" else line for line in app.event_log.lines
    ]


async def commands_done(app: GatewayApp) -> None:
    """Wait for the control commands started by key presses (not the event pump)."""
    # (not wait_for_complete: given an empty list it waits for every worker)
    await asyncio.gather(*(w.wait() for w in list(app.workers) if w.group == "commands"))


async def two_polls(app: GatewayApp, gw: FakeGateway, clock: Clock, pilot: Pilot[None]) -> None:
    await app.tick()
    gw.ike_sas[:] = synthetic_ike_sas(6, tick=11)
    clock.now += 10
    await app.tick()
    await pilot.pause()


@contextlib.asynccontextmanager
async def console(
    gw: FakeGateway | None = None,
) -> AsyncIterator[tuple[GatewayApp, FakeGateway, Pilot[None]]]:
    """The app on an in-memory gateway (6 Child SAs + an idle connection), polled twice
    10 s apart so that rates exist."""
    gw = gw or gateway()
    clock = Clock()
    app = make_app(gw, clock)
    async with app.run_test(size=SIZE) as pilot:
        await two_polls(app, gw, clock, pilot)
        yield app, gw, pilot


async def test_main_screen_snapshot_and_header_totals() -> None:
    async with console() as (app, gw, pilot):
        text = screen_text(app)
        assert "● connected fake.sock  gateway 0.1.0  up 1h02m" in text
        assert (
            "XDP pass 99 (esp 99)   redirect 40 (esp 40)   drop 9 (esp_unknown_spi 7, "
            "ike_rate_limited 2)   steered cpu1 40   slots 6/65536" in text
        )
        assert "XFRM errors 2" in text
        assert "Child SAs 6" in text
        assert len(app.model.view) == 7  # 6 Child SAs + the idle connection
        assert app.table.selected is not None and app.table.selected.name == "conn-0.net-0"
        check_snapshot("tui_main", widgets_text(app))


async def test_cursor_moves_and_detail_follows() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("down", "down", "down")
        await pilot.pause()
        row = app.table.selected
        assert row is not None and row.name == "conn-1.net-1"
        detail = str(app.query_one("#detail-text").render())
        assert "conn-1.net-1" in detail and "c0000003 / d0000003" in detail
        assert "rekey in 49m53s" in detail  # rekey_at now+3000+3, 10 s later
        assert app.query_one("#spark-in", Sparkline).data == [pytest.approx(1300 * 8)]
        await pilot.press("end")
        assert app.table.selected is not None and app.table.selected.name == "idle"
        await pilot.press("home")
        assert app.table.cursor == 0


async def test_a_road_warriors_address_and_identity() -> None:
    """The virtual IP and EAP identity list-sas reports: in the detail pane, and the
    filter finds the SA by them."""
    gw = gateway()
    gw.ike_sas[2] |= {"virtual_ips": ["10.3.0.7"], "eap_identity": "alice"}
    async with console(gw) as (app, _, pilot):
        await pilot.press("slash", *"10.3.0.7", "enter")
        await pilot.pause()
        rows = [r.name for r in app.model.view]  # that IKE SA's Child SAs
        assert rows and {r.connection for r in app.model.view} == {gw.ike_sas[2]["connection"]}
        detail = str(app.query_one("#detail-text").render())
        assert "EAP id alice" in detail and "virtual IP 10.3.0.7" in detail
        await pilot.press("escape", "slash", *"alice", "enter")
        assert [r.name for r in app.model.view] == rows


async def test_filter_and_sort_keys() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("slash", *"conn-2")
        assert [r.name for r in app.model.view] == ["conn-2.net-0", "conn-2.net-1"]
        await pilot.press("enter")  # keeps the filter, back to the table
        assert app.focused is app.table and app.model.filter == "conn-2"
        assert "filter 'conn-2': 2 of 7 rows" in app.summary_text().plain
        await pilot.press("escape")
        assert len(app.model.view) == 7
        assert "filter" not in app.summary_text().plain
        await pilot.press("s")
        assert app.model.sort_key == "child"
        await pilot.press("s", "s", "s", "s", "s")  # child->state->peer->esp->offload->bps_in
        assert app.model.sort_key == "bps_in"
        await pilot.press("S")
        assert app.model.sort_reverse is True
        assert app.model.view[0].name == "conn-2.net-1"  # highest inbound rate
        assert "▼In bit/s" in app.table.header_text()


async def test_g_switches_to_one_row_per_ike_sa() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("g")
        assert [r.name for r in app.model.view] == ["conn-0", "conn-1", "conn-2", "idle"]
        assert "[IKE SA view]" in app.summary_text().plain
        detail = str(app.query_one("#detail-text", Static).render())
        assert "Child SAs 2" in detail and "in 16.8 kb/s" in detail  # (1000 + 1100) * 8
        await pilot.press("r")  # on an IKE SA row: rekeys the IKE SA (the connection)
        await commands_done(app)
        assert gw.calls[-1] == ("rekey", "conn-0")
        await pilot.press("g")
        assert len(app.model.view) == 7


async def test_click_on_a_column_title_sorts() -> None:
    async with console() as (app, gw, pilot):
        await pilot.click("#sas", offset=(32, 0))  # the State column
        assert app.model.sort_key == "state"


async def test_initiate_terminate_rekey_reload_with_confirmation() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("end", "i")  # the idle connection
        await commands_done(app)
        assert gw.calls[-1] == ("initiate", "idle")
        await pilot.press("home", "r")
        await commands_done(app)
        assert gw.calls[-1] == ("rekey", "conn-0.net-0")
        await pilot.press("K")  # the IKE SA of the selected row's connection
        await commands_done(app)
        assert gw.calls[-1] == ("rekey", "conn-0")

        await pilot.press("t")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen)
        assert ("terminate", "conn-0.net-0") not in gw.calls
        await pilot.press("t", "y")
        await commands_done(app)
        assert gw.calls[-1] == ("terminate", "conn-0.net-0")
        await app.tick()
        assert "conn-0.net-0" not in [r.name for r in app.model.view]

        await pilot.press("T", "y")
        await commands_done(app)
        assert gw.calls[-1] == ("terminate", "conn-0")
        await pilot.press("R")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await commands_done(app)
        assert gw.calls[-1] == ("reload", None)
        assert "reload: ok" in logged(app)


async def test_refused_command_is_shown_not_raised() -> None:
    async with console() as (app, gw, pilot):
        gw.ike_sas[0]["children"].clear()  # gone on the gateway, still on screen
        await pilot.press("r")
        await commands_done(app)
        assert any(
            "rekey conn-0.net-0 failed: no SA named conn-0.net-0 (unknown-sa)" in line
            for line in logged(app)
        )
        assert any(n.severity == "error" for n in app._notifications)


async def test_a_refused_poll_is_logged_and_the_next_one_recovers() -> None:
    async with console() as (app, gw, pilot):
        gw.refuse_stats = True
        await app.tick()
        assert "22:13:30 poll failed: unexpected reply from the gateway" in app.event_log.lines
        assert app.status == "connected" and len(app.model.view) == 7  # last data kept
        gw.refuse_stats = False
        gw.ike_sas.pop()
        await app.tick()
        # conn-2's IKE SA is gone: its two Child SA rows become one idle connection row
        assert {r.name: r.state for r in app.model.view}["conn-2"] == "down"
        assert len(app.model.view) == 6


async def test_survives_daemon_restart() -> None:
    async with console() as (app, gw, pilot):
        gw.stop()
        await app.tick()
        await pilot.pause()
        assert app.status == "disconnected" and app.source is None
        assert app.query_one("#summary").has_class("disconnected")
        check_snapshot("tui_disconnected", widgets_text(app))
        await pilot.press("i")  # an action while disconnected: a message, no crash
        await commands_done(app)
        await app.tick()  # still down: stays disconnected, connector retried
        assert app.status == "disconnected"
        gw.start()
        await app.tick()
        assert app.status == "connected" and gw.connections == 2
        assert "DISCONNECTED" not in str(app.summary_text())
        assert len(app.model.view) == 7
        # incremental list-sas: each poll sends the last reply's cursor; a new
        # connection starts from nothing (the daemon may have restarted)
        assert gw.cursors[0] is None and gw.cursors[1] == {"epoch": "fake", "version": 1}
        assert gw.cursors[-1] is None


async def test_a_gateway_without_incremental_list_sas_gets_plain_polls() -> None:
    async with console() as (app, gw, pilot):
        gw.incremental = False
        gw.ike_sas.pop()  # a change the plain list-sas must show
        await app.tick()
        await pilot.pause()
        assert app.incremental is False and len(app.model.view) == 6
        assert not [line for line in logged(app) if "poll failed" in line]


async def test_poll_loop_reconnects_by_itself() -> None:
    gw = gateway()
    app = GatewayApp(gw.connector, label="fake.sock", interval=0.05, retry_interval=0.05)

    async with app.run_test(size=SIZE) as pilot:
        await eventually(pilot, "first poll", lambda: len(app.model.view) == 7)
        gw.stop()
        await eventually(pilot, "disconnected", lambda: app.status == "disconnected")
        gw.start()
        await eventually(
            # at least one new connection: under load a poll and the event stream may
            # each have reconnected by the time this is checked
            pilot,
            "reconnect",
            lambda: app.status == "connected" and gw.connections >= 2,
        )


async def test_events_are_logged_without_secrets() -> None:
    async with console() as (app, gw, pilot):
        gw.push_event(
            type="child-rekeyed",
            time=NOW,
            connection="conn-0",
            child="net-0",
            encr_key_in="deadbeef",
            psk="hunter2",
        )
        gw.push_event(type="dpd-failed", time=NOW + 1, connection="conn-1")
        await eventually(
            pilot,
            "the events in the log",
            lambda: any("dpd-failed" in line for line in app.event_log.lines),
        )
        assert "22:13:20 child-rekeyed conn-0 child=net-0" in app.event_log.lines
        assert "22:13:21 dpd-failed conn-1" in app.event_log.lines
        text = screen_text(app)
        assert "deadbeef" not in text and "hunter2" not in text


async def test_secrets_in_list_sas_never_reach_the_screen() -> None:
    gw = gateway()
    gw.ike_sas[0]["children"][0]["encr_key_in"] = "deadbeefcafe"
    gw.ike_sas[0]["sk_d"] = "0badc0de"
    async with console(gw) as (app, gw, _pilot):
        text = screen_text(app)
        assert "deadbeef" not in text and "0badc0de" not in text


async def test_help_screen_snapshot() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for binding in GatewayApp.BINDINGS:
            assert isinstance(binding, Binding)
            key = binding.key.split(",")[0]
            shown = {"question_mark": "?", "slash": "/", "escape": "escape"}.get(key, key)
            assert f"  {shown} " in text, f"help does not explain {key}"
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_initiates_a_connection_by_name() -> None:
    async with console() as (app, gw, pilot):
        await pilot.press("ctrl+p")
        await pilot.press(*"Initiate idle")

        def found() -> bool:
            lists = app.screen.query(CommandList)
            return bool(lists) and lists.first().option_count > 0

        await eventually(pilot, "the palette's match", found)
        await pilot.press("enter")
        await eventually(
            pilot, "the initiate command", lambda: gw.calls[-1:] == [("initiate", "idle")]
        )
