"""The gateway console (`gateway tui`): a Textual client of the control API.

One factory (`GatewayApp(connector)`) serves the CLI and the tests. A worker polls the
gateway (incremental list-sas into a `SaMirror` and stats every `interval`, list-conns
now and then or after a reload; a gateway without incremental list-sas gets plain ones)
and another pumps the `subscribe` events into the log and wakes the poller. When a call
raises `SourceDisconnected`, the source is dropped, the header says so and the poller keeps
trying the connector: the console survives a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Log, Sparkline, Static

from ui.mirror import SaMirror
from ui.model import (
    COLUMN_KEYS,
    COLUMNS,
    Row,
    SaModel,
    duration,
    format_event,
    human,
    human_bytes,
    redact,
)
from ui.source import Connector, GatewaySource, SourceDisconnected, SourceRefused
from ui.table import SaTable

CONNS_EVERY = 10  # list-conns once per this many polls (and after config-reloaded)


def tune_gc() -> None:
    """For the console's own process (`gateway tui`), not for library use.

    Decoding a list-sas reply of 10,000 Child SAs allocates ~100k containers; with the
    default thresholds that sets off full collections of 0.2-0.4 s in the middle of a
    refresh (measured, docs/benchmarks/observability.md). Everything loaded so far is
    moved out of the collector's sight and collections run less often (cycles are still
    collected, later)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question for destructive actions: y/enter confirms, n/escape cancels."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 64; height: auto; border: thick $error;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; align: center middle; }
    ConfirmScreen Button { margin: 0 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP_TEXT = """\
[b]Gateway console[/b]: a live view of the gateway through its control socket.

[b]Navigation[/b]
  up/down, pgup/pgdn, home/end   move in the SA table (mouse: click a row)
  /                              filter rows by connection, child, peer, ID, state;
  escape                         enter keeps the filter, escape clears it
  s                              sort by the next column (or click a column title)
  S                              reverse the sort order
  g                              one row per IKE SA (children summed) / per Child SA

[b]Actions[/b] (on the selected row)
  i                              initiate (a child: conn.child, else the connection)
  t                              terminate the selected SA (asks first)
  T                              terminate the whole connection (asks first)
  r                              rekey the selected SA
  K                              rekey the IKE SA of the selected row's connection
  R                              reload the configuration (asks first)
  ctrl+p                         command palette: every action, plus initiate, rekey and
                                 terminate of any configured connection by name

[b]Other[/b]
  ?                              this help        q  quit

Rates are computed from counter deltas between polls. Keys and PSKs are never shown.
When the gateway goes away the header turns red and the console reconnects by itself.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 90; height: auto; border: thick $primary;
                          background: $surface; padding: 1 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)


class GatewayApp(App[None]):
    TITLE = "gateway console"
    CSS = """
    #summary { height: 4; padding: 0 1; background: $primary-background; }
    #summary.disconnected { background: $error 60%; }
    #main { height: 1fr; }
    SaTable { width: 3fr; }
    #detail { width: 1fr; min-width: 44; border-left: solid $primary; padding: 0 1; }
    #detail-text { height: auto; margin-top: 1; }
    #detail Sparkline { height: 2; }
    #events { height: 7; border-top: solid $primary; }
    #filter { dock: bottom; display: none; }
    #filter.visible { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
        Binding("g", "group", "IKE/Child view"),
        Binding("i", "initiate", "Initiate"),
        Binding("t", "terminate", "Terminate"),
        Binding("T", "terminate_connection", "Term. conn", show=False),
        Binding("r", "rekey", "Rekey"),
        Binding("K", "rekey_connection", "Rekey IKE", show=False),
        Binding("R", "reload", "Reload"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self,
        connector: Connector,
        *,
        label: str = "gateway",
        interval: float = 1.0,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        poll: bool = True,
    ) -> None:
        super().__init__()
        self.connector = connector
        self.label = label
        self.interval = interval
        self.retry_interval = retry_interval
        self.clock = clock
        self.poll = poll
        self.model = SaModel()
        self.mirror = SaMirror()  # the SA table, kept by incremental list-sas
        self.incremental = True  # False: the gateway refused `since` (an older one)
        self.source: GatewaySource | None = None
        self.conns: list[dict[str, Any]] | None = None
        self.stats: dict[str, Any] = {}
        self.status = "connecting"
        self.last_error = ""
        self._polls = 0
        self._prev_stats: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self._tick_lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        with Horizontal(id="main"):
            yield SaTable(self.model, self.clock, id="sas")
            with VerticalScroll(id="detail"):
                yield Label("in bit/s", id="spark-in-label")
                yield Sparkline([], id="spark-in")
                yield Label("out bit/s", id="spark-out-label")
                yield Sparkline([], id="spark-out")
                yield Static("no SA selected", id="detail-text")
        yield Log(id="events", max_lines=2000)
        yield Input(
            placeholder="filter: connection, child, peer, id, state (esc clears)", id="filter"
        )
        yield Footer()

    @property
    def table(self) -> SaTable:
        return self.query_one(SaTable)

    @property
    def event_log(self) -> Log:
        return self.query_one("#events", Log)

    def on_mount(self) -> None:
        self.table.focus()
        self.update_summary()
        if self.poll:
            self.run_worker(self._poll_loop(), name="poll", group="poll", exclusive=True)

    async def on_unmount(self) -> None:
        await self._drop_source()

    # -- polling -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.tick()
            self._wake.clear()
            # A poll that takes long (a huge list-sas over a slow link) stretches the
            # interval so the console stays responsive: at most a quarter of the time polling.
            busy = 3 * (loop.time() - started)
            wait = max(self.interval, busy) if self.source is not None else self.retry_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def wake(self) -> None:
        """Poll again now rather than at the next interval."""
        self._wake.set()

    async def tick(self) -> None:
        """One poll: connect if needed, fetch, apply. Never raises for gateway trouble."""
        async with self._tick_lock:
            if self.source is None and not await self._connect():
                return
            source = self.source
            assert source is not None
            try:
                sas = await self._list_sas(source)
                stats = await source.stats()
                if self.conns is None or self._polls % CONNS_EVERY == 0:
                    self.conns = await source.list_conns()
            except SourceDisconnected as exc:
                await self._lost(str(exc))
                return
            except SourceRefused as exc:
                self.log_line(f"poll failed: {exc}")
                return
            self._polls += 1
            self.apply(sas, stats, self.clock())

    async def _list_sas(self, source: GatewaySource) -> list[dict[str, Any]]:
        """The SA table: what changed since the last poll onto the mirror, or a plain
        list-sas from a gateway that does not know `since`."""
        if not self.incremental:
            return await source.list_sas()
        try:
            reply = await source.sa_changes(self.mirror.cursor)
        except SourceRefused as exc:
            if exc.code != "bad-request":
                raise
            self.incremental = False
            return await source.list_sas()
        try:
            return self.mirror.apply(reply)
        except ValueError as exc:
            raise SourceRefused("bad-reply", str(exc)) from None

    def apply(self, ike_sas: list[dict[str, Any]], stats: Mapping[str, Any], now: float) -> None:
        """Show one poll's data: the model updates rows in place, the table repaints the
        visible lines, the header and the detail pane follow."""
        self.model.update(ike_sas, self.conns or [], now)
        self.stats = dict(stats) if isinstance(stats, Mapping) else {}
        b_in, b_out = _int(self.stats.get("bytes_in")), _int(self.stats.get("bytes_out"))
        if self._prev_stats is not None and now > self._prev_stats[0]:
            dt = now - self._prev_stats[0]
            self._rates = (
                max(b_in - self._prev_stats[1], 0) * 8 / dt,
                max(b_out - self._prev_stats[2], 0) * 8 / dt,
            )
        self._prev_stats = (now, b_in, b_out)
        self.table.data_changed()
        self.update_summary()
        self.update_detail(self.table.selected)

    async def _connect(self) -> bool:
        try:
            source = await self.connector()
        except SourceDisconnected as exc:
            if self.status != "disconnected" or exc.args[0:1] != (self.last_error,):
                self._set_disconnected(str(exc))
            return False
        self.source = source
        self.conns = None
        self.mirror.reset()  # a new connection (maybe a restarted daemon): all anew
        self.incremental = True
        self._prev_stats = None
        self.status = "connected"
        self.last_error = ""
        self.log_line(f"connected to {self.label}")
        self.update_summary()
        self.run_worker(self._pump_events(source), name="events", group="events", exclusive=True)
        return True

    async def _pump_events(self, source: GatewaySource) -> None:
        try:
            events = await source.subscribe()
            async for event in events:
                if isinstance(event, Mapping):
                    self.on_gateway_event(event)
        except (SourceDisconnected, SourceRefused):
            pass
        if self.source is source:
            self.wake()  # the poller notices the lost connection at once

    def on_gateway_event(self, event: Mapping[str, Any]) -> None:
        self.event_log.write_line(format_event(event))  # stamped with the event's own time
        if event.get("type") == "config-reloaded":
            self.conns = None
        self.wake()

    async def _lost(self, reason: str) -> None:
        await self._drop_source()
        self._set_disconnected(reason)

    async def _drop_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            with contextlib.suppress(SourceDisconnected, OSError):
                await source.close()

    def _set_disconnected(self, reason: str) -> None:
        self.status = "disconnected"
        self.last_error = reason
        self._prev_stats = None
        self.log_line(f"disconnected: {reason}")
        self.update_summary()

    # -- rendering -----------------------------------------------------------------------

    def log_line(self, text: str) -> None:
        """A line of the console's own (connection, command results) in the event log."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        self.event_log.write_line(f"{stamp} {text}")

    def update_summary(self) -> None:
        summary = self.query_one("#summary", Static)
        summary.set_class(self.status == "disconnected", "disconnected")
        summary.update(self.summary_text())

    def summary_text(self) -> Text:
        s = self.stats
        if self.status == "connected":
            head = Text("● connected ", style="bold green")
        elif self.status == "disconnected":
            head = Text("○ DISCONNECTED ", style="bold")
        else:
            head = Text("… connecting ", style="bold yellow")
        head.append(f"{self.label}")
        if s.get("version"):
            head.append(f"  gateway {s['version']}")
        if isinstance(s.get("uptime"), int | float):
            head.append(f"  up {duration(s['uptime'])}")
        if s.get("dataplane"):
            head.append(f"  data plane {s['dataplane']}")
        if self.status == "disconnected":
            head.append(
                f"  {self.last_error} (retrying every {self.retry_interval:g}s;"
                " data below is stale)"
            )
        if self.model.group == "ike":
            head.append("  [IKE SA view]", style="bold")
        if self.model.filter:
            head.append(
                f"  filter {self.model.filter!r}: {len(self.model.view)} of "
                f"{len(self.model.rows)} rows",
                style="bold",
            )
        ike = _mapping(s.get("ike_sas"))
        ike_text = (
            ", ".join(f"{_int(n)} {str(k).lower()}" for k, n in sorted(ike.items()) if _int(n))
            or "0"
        )
        line2 = (
            f"IKE SAs {ike_text}   Child SAs {_int(s.get('child_sas'))}   "
            f"in {human(self._rates[0], 'b/s')} ({human_bytes(_int(s.get('bytes_in')))})"
            f"   out {human(self._rates[1], 'b/s')} "
            f"({human_bytes(_int(s.get('bytes_out')))})"
        )
        xfrm = _mapping(s.get("xfrm_errors"))
        fallbacks = sum(_int(n) for n in _mapping(s.get("offload_fallbacks")).values())
        line3 = (
            f"XFRM errors {sum(_int(v) for v in xfrm.values())}"
            f"   handshakes {_int(s.get('handshakes'))}   rekeys {_int(s.get('rekeys'))}"
            f"   auth failures {_int(s.get('auth_failures'))}"
            f"   DPD failures {_int(s.get('dpd_failures'))}"
            + (f"   offload fallbacks {fallbacks}" if fallbacks else "")
        )
        return Text.assemble(head, "\n", line2, "\n", xdp_text(s), "\n", line3)

    def on_sa_table_highlighted(self, message: SaTable.Highlighted) -> None:
        self.update_detail(message.row)

    def update_detail(self, row: Row | None) -> None:
        self.query_one("#detail-text", Static).update(detail_text(row, self.clock()))
        spark_in = self.query_one("#spark-in", Sparkline)
        spark_out = self.query_one("#spark-out", Sparkline)
        spark_in.data = list(row.history_in) if row is not None else []
        spark_out.data = list(row.history_out) if row is not None else []
        peak_in = max(row.history_in, default=0.0) if row is not None else 0.0
        peak_out = max(row.history_out, default=0.0) if row is not None else 0.0
        self.query_one("#spark-in-label", Label).update(f"in bit/s (peak {human(peak_in)})")
        self.query_one("#spark-out-label", Label).update(f"out bit/s (peak {human(peak_out)})")

    # -- actions -------------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.model.set_filter(event.value)
            self.table.data_changed()
            self.update_summary()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value:
                event.input.remove_class("visible")
            self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("visible")
        self.model.set_filter("")
        self.table.data_changed()
        self.update_summary()
        self.table.focus()

    def action_sort_next(self) -> None:
        i = COLUMN_KEYS.index(self.model.sort_key)
        self.model.set_sort(COLUMN_KEYS[(i + 1) % len(COLUMN_KEYS)], reverse=False)
        self.table.data_changed()

    def action_group(self) -> None:
        self.model.set_group("child" if self.model.group == "ike" else "ike")
        self.table.data_changed()
        self.update_summary()

    def action_sort_reverse(self) -> None:
        self.model.set_sort(self.model.sort_key)
        self.table.data_changed()

    def sort_by(self, key: str) -> None:
        self.model.set_sort(key, reverse=False)
        self.table.data_changed()

    def _selected_name(self, connection: bool = False) -> str | None:
        row = self.table.selected
        if row is None:
            self.notify("no SA selected", severity="warning")
            return None
        return row.connection if connection else row.name

    def action_initiate(self) -> None:
        name = self._selected_name()
        if name is not None:
            self.run_command("initiate", name)

    def action_rekey(self) -> None:
        row = self.table.selected
        if row is not None and row.kind == "conn":
            self.notify(f"{row.connection} has no SA to rekey", severity="warning")
            return
        name = self._selected_name()
        if name is not None:
            self.run_command("rekey", name)

    def action_rekey_connection(self) -> None:
        row = self.table.selected
        if row is not None and row.kind == "conn":
            self.notify(f"{row.connection} has no SA to rekey", severity="warning")
            return
        name = self._selected_name(connection=True)
        if name is not None:
            self.run_command("rekey", name)

    def action_terminate(self) -> None:
        name = self._selected_name()
        if name is not None:
            self.confirm(f"Terminate {name}?", "terminate", name)

    def action_terminate_connection(self) -> None:
        name = self._selected_name(connection=True)
        if name is not None:
            self.confirm(f"Terminate every SA of connection {name}?", "terminate", name)

    def action_reload(self) -> None:
        self.confirm("Reload the configuration? Removed connections are torn down.", "reload", None)

    def confirm(self, question: str, command: str, name: str | None) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(command, name)
            else:
                self.notify(f"{command} cancelled")

        self.push_screen(ConfirmScreen(question), answered)

    def run_command(self, command: str, name: str | None) -> None:
        self.run_worker(self.command(command, name), group="commands")

    async def command(self, command: str, name: str | None) -> bool:
        """Send one control command; the outcome goes to the log and a notification."""
        what = f"{command} {name}" if name else command
        source = self.source
        if source is None:
            self.notify(f"{what}: not connected to the gateway", severity="error")
            return False
        try:
            if name is None:
                await source.reload()
            else:
                await getattr(source, command)(name)
        except SourceRefused as exc:
            self.log_line(f"{what} failed: {exc} ({exc.code})")
            self.notify(f"{what} failed: {exc}", severity="error")
            return False
        except SourceDisconnected as exc:
            self.notify(f"{what}: gateway went away", severity="error")
            await self._lost(str(exc))
            return False
        self.log_line(f"{what}: ok")
        self.notify(f"{what}: ok")
        if command == "reload":
            self.conns = None
        self.wake()
        return True

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Initiate selected", "Initiate the selected SA or connection", self.action_initiate
        )
        yield SystemCommand(
            "Terminate selected", "Terminate the selected SA (asks first)", self.action_terminate
        )
        yield SystemCommand("Rekey selected", "Rekey the selected SA", self.action_rekey)
        yield SystemCommand(
            "Reload configuration", "Reload the gateway configuration", self.action_reload
        )
        yield SystemCommand("Filter", "Filter the SA table", self.action_filter)
        yield SystemCommand(
            "Toggle IKE SA / Child SA view", "One row per IKE SA or per Child SA", self.action_group
        )
        for column in COLUMNS:
            yield SystemCommand(
                f"Sort by {column.title}",
                "Sort the SA table",
                _bind(self.sort_by, column.key),
                discover=False,
            )
        names = {str(c.get("name", "")) for c in self.conns or () if isinstance(c, Mapping)}
        for conn in sorted(names - {""}):
            yield SystemCommand(
                f"Initiate {conn}",
                "Initiate this connection",
                _bind(self.run_command, "initiate", conn),
                discover=False,
            )
            yield SystemCommand(
                f"Rekey {conn}",
                "Rekey this connection's IKE SA",
                _bind(self.run_command, "rekey", conn),
                discover=False,
            )
            yield SystemCommand(
                f"Terminate {conn}",
                "Terminate this connection (asks first)",
                _bind(self.confirm, f"Terminate every SA of connection {conn}?", "terminate", conn),
                discover=False,
            )


def _bind(func: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: func(*args)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return f"in {duration(at - now)}" if at >= now else f"{duration(now - at)} ago"


def offload_text(child: Mapping[str, Any]) -> str:
    """What the kernel does ("crypto on nsim0"), and why less than asked."""
    text = str(child.get("offload", "none"))
    if child.get("offload_dev") and text != "none":
        text += f" on {child['offload_dev']}"
    if child.get("offload_reason"):
        text += f" (asked on {child.get('offload_dev') or '?'}: {child['offload_reason']})"
    return text


def xdp_text(stats: Mapping[str, Any]) -> str:
    """The XDP programs' verdicts (each action with its reasons), the ESP steered per
    CPU and the slot space, as `stats` has them."""
    by_action: dict[str, dict[str, int]] = {}
    for c in stats.get("xdp") or ():
        if isinstance(c, Mapping):
            reasons = by_action.setdefault(str(c.get("action", "?")), {})
            reason = str(c.get("reason", "?"))
            reasons[reason] = reasons.get(reason, 0) + _int(c.get("packets"))
    parts = []
    for action in (
        "pass",
        "redirect",
        "drop",
        *sorted(set(by_action) - {"pass", "redirect", "drop"}),
    ):
        reasons = by_action.get(action, {})
        total = sum(reasons.values())
        shown = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
        parts.append(f"{action} {total}" + (f" ({shown})" if reasons else ""))
    steered = _mapping(stats.get("xdp_steered"))
    if steered:
        parts.append(
            "steered " + ", ".join(f"cpu{c} {_int(n)}" for c, n in sorted(steered.items()))
        )
    slots = _mapping(stats.get("xdp_slots"))
    if slots:
        exhausted = _int(slots.get("exhausted"))
        parts.append(
            f"slots {_int(slots.get('used'))}/{_int(slots.get('capacity'))}"
            + (f" ({exhausted} Child SAs refused: full)" if exhausted else "")
        )
    return "XDP " + "   ".join(parts)


def detail_text(row: Row | None, now: float) -> Text:
    """The detail pane: everything the gateway told about the SA, except key material."""
    if row is None:
        return Text("no SA selected")
    t = Text()
    t.append(f"{row.name}\n", style="bold")
    fields: dict[str, str] = {"state": row.state}
    if row.kind == "conn":
        fields |= {"peer": row.peer, "remote id": row.remote_id, "IKE proposals": row.ike_proposal}
    else:
        fields |= {
            "IKE state": row.ike_state,
            "local": row.local_addr,
            "local id": row.local_id,
            "remote": row.peer,
            "remote id": row.remote_id,
            "IKE": row.ike_proposal,
            "SPI i": row.spi_i,
            "SPI r": row.spi_r,
        }
    if row.kind == "child":
        fields |= {
            "ESP": row.esp_proposal,
            "mode": row.mode + (" +UDP encap" if row.encap else ""),
            "offload": offload_text(row.last),
            "SPI in/out": f"{row.spi_in} / {row.spi_out}",
            "local TS": ", ".join(row.local_ts),
            "remote TS": ", ".join(row.remote_ts),
            "installed": _when(row.installed_at, now),
            "rekey": _when(row.rekey_at, now),
            "expire": _when(row.expire_at, now),
            "in": f"{human(row.bps_in, 'b/s')} {human(row.pps_in, 'p/s')}",
            "out": f"{human(row.bps_out, 'b/s')} {human(row.pps_out, 'p/s')}",
            "total in": f"{human_bytes(row.bytes_in)} {row.packets_in} packets",
            "total out": f"{human_bytes(row.bytes_out)} {row.packets_out} packets",
            "dropped": (
                f"replay {_int(row.last.get('replay_errors'))}, "
                f"too old {_int(row.last.get('replay_window_errors'))}, "
                f"integrity {_int(row.last.get('integrity_failures'))}"
            ),
        }
        cpu = row.last.get("cpu")
        if cpu is not None:
            fields["ESP on CPU"] = str(cpu)
    elif row.kind == "ikesa":
        fields |= {
            "Child SAs": str(row.children),
            "rekey": _when(row.rekey_at, now),
            "in": f"{human(row.bps_in, 'b/s')} {human(row.pps_in, 'p/s')}",
            "out": f"{human(row.bps_out, 'b/s')} {human(row.pps_out, 'p/s')}",
            "total in": f"{human_bytes(row.bytes_in)} {row.packets_in} packets",
            "total out": f"{human_bytes(row.bytes_out)} {row.packets_out} packets",
        }
    elif row.kind == "ike":
        fields |= {"rekey": _when(row.rekey_at, now), "expire": _when(row.expire_at, now)}
    if row.eap_identity:  # a road warrior: who it proved to be, the address it was given
        fields["EAP id"] = row.eap_identity
    if row.virtual_ips:
        fields["virtual IP"] = ", ".join(row.virtual_ips)
    for k, v in redact(fields).items():
        t.append(f"{k:>10} ", style="bold")
        t.append(f"{v}\n")
    return t
