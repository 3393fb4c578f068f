"""The SA table: a virtual, line-rendered table over `SaModel.view`.

Only the visible lines are rendered (Textual's Line API), so the cost of a refresh does not
depend on how many SAs there are; the row objects are updated in place by the model. The
header line stays put while the rows scroll; clicking a header sorts by that column.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ui.model import COLUMNS, Row, RowKey, SaModel, cell

_STATE_STYLES = {
    "INSTALLED": Style(color="green"),
    "ESTABLISHED": Style(color="green"),
    "REKEYING": Style(color="yellow"),
    "CONNECTING": Style(color="yellow"),
    "DELETING": Style(color="red"),
    "down": Style(color="bright_black"),
}
_GAP = 1


class SaTable(ScrollView, can_focus=True):
    """Rows of `model.view`, a cursor, and sorting by column."""

    DEFAULT_CSS = """
    SaTable { background: $surface; }
    SaTable > .satable--header { text-style: bold; background: $panel; }
    SaTable > .satable--cursor { background: $accent 40%; }
    """
    COMPONENT_CLASSES = {"satable--header", "satable--cursor"}
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to another row (or the table became empty: row is None)."""

        def __init__(self, row: Row | None) -> None:
            super().__init__()
            self.row = row

    def __init__(
        self, model: SaModel, clock: Callable[[], float] = time.time, *, id: str | None = None
    ) -> None:  # noqa: A002 (Textual's name)
        super().__init__(id=id)
        self.model = model
        self.clock = clock
        self.cursor = 0
        self._cursor_key: RowKey | None = None
        self._offsets: list[int] = []
        x = 0
        for c in COLUMNS:
            self._offsets.append(x)
            x += c.width + _GAP
        self._width = x

    # -- data ----------------------------------------------------------------------------

    @property
    def selected(self) -> Row | None:
        view = self.model.view
        return view[self.cursor] if 0 <= self.cursor < len(view) else None

    def data_changed(self) -> None:
        """The model's view changed: keep the cursor on the same SA, resize, repaint."""
        view = self.model.view
        if self._cursor_key is not None:
            row = self.model.rows.get(self._cursor_key)
            if row is not None and (self.cursor >= len(view) or view[self.cursor] is not row):
                try:
                    self.cursor = view.index(row)
                except ValueError:
                    pass
        self.cursor = min(self.cursor, max(len(view) - 1, 0))
        self.virtual_size = Size(self._width, len(view) + 1)
        self._announce()
        self.refresh()

    def _announce(self) -> None:
        row = self.selected
        key = row.key if row is not None else None
        if key != self._cursor_key:
            self._cursor_key = key
            self.post_message(self.Highlighted(row))

    # -- navigation ----------------------------------------------------------------------

    def move_cursor(self, index: int) -> None:
        n = len(self.model.view)
        if n == 0:
            return
        self.cursor = max(0, min(index, n - 1))
        top = self.scroll_offset.y
        body = max(self.size.height - 1, 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False)
        self._announce()
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor + direction * max(self.size.height - 2, 1))

    def action_jump(self, index: int) -> None:
        self.move_cursor(index if index >= 0 else len(self.model.view) - 1)

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + self.scroll_offset.x
            for column, start in zip(COLUMNS, self._offsets, strict=True):
                if start <= x < start + column.width + _GAP:
                    self.model.set_sort(column.key)
                    self.data_changed()
                    return
        else:
            self.move_cursor(self.scroll_offset.y + event.y - 1)

    # -- rendering -----------------------------------------------------------------------

    def header_text(self) -> str:
        parts = []
        for c in COLUMNS:
            title = c.title
            if c.key == self.model.sort_key:
                title = ("▼" if self.model.sort_reverse else "▲") + title
            parts.append(_fit(title, c.width, c.right))
        return (" " * _GAP).join(parts)

    def row_text(self, row: Row, now: float) -> list[tuple[str, Style | None]]:
        out: list[tuple[str, Style | None]] = []
        for i, c in enumerate(COLUMNS):
            if i:
                out.append((" " * _GAP, None))
            text = _fit(cell(row, c.key, now), c.width, c.right)
            out.append((text, _STATE_STYLES.get(row.state) if c.key == "state" else None))
        return out

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            style = base + self.get_component_rich_style("satable--header")
            strip = Strip([Segment(self.header_text().ljust(self._width), style)])
            return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, style)
        index = scroll_y + y - 1
        view = self.model.view
        if index >= len(view):
            return Strip.blank(width, base)
        row_style = base
        if index == self.cursor:
            row_style = base + self.get_component_rich_style("satable--cursor")
        segments = [
            Segment(text, row_style + style if style else row_style)
            for text, style in self.row_text(view[index], self.clock())
        ]
        strip = Strip(segments, self._width)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, row_style)

    def visible_text(self) -> list[str]:
        """The table as plain text lines, header first (tests, screenshots)."""
        now = self.clock()
        top = self.scroll_offset.y
        lines = [self.header_text()]
        for row in self.model.view[top : top + max(self.size.height - 1, 0)]:
            lines.append("".join(t for t, _ in self.row_text(row, now)))
        return lines


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        return text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)
