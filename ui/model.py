"""The console's data model: rows built from list-sas / list-conns, rates from counter
deltas, filtering and sorting. Pure Python, no Textual, so it is unit-tested directly.

Rows are updated in place at every poll (never rebuilt) so a tick over 10,000 Child SAs
stays cheap; the table widget renders only the visible rows.

A row is one of:
- a Child SA (kind "child"), carrying its IKE SA's peer and state,
- an IKE SA without any Child SA (kind "ike", e.g. still CONNECTING),
- a configured connection with no IKE SA at all (kind "conn", state "down"),
- in the IKE SA view (`group = "ike"`), an IKE SA with its Child SAs summed (kind
  "ikesa": rates, totals and the child count are sums over its Child SA rows).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HISTORY = 60  # samples kept for the detail pane's sparklines

RowKey = tuple[str, str, str]  # (kind, IKE SA or connection id, Child SA id)


class Row:
    """One line of the SA table. Mutable: updated in place at every poll."""

    __slots__ = (
        "key",
        "kind",
        "connection",
        "child",
        "state",
        "ike_state",
        "local_addr",
        "peer",
        "local_id",
        "remote_id",
        "virtual_ips",
        "eap_identity",
        "ike_proposal",
        "esp_proposal",
        "offload",
        "mode",
        "encap",
        "spi_in",
        "spi_out",
        "spi_i",
        "spi_r",
        "ike_rekey_at",
        "children",
        "local_ts",
        "remote_ts",
        "bytes_in",
        "bytes_out",
        "packets_in",
        "packets_out",
        "bps_in",
        "bps_out",
        "pps_in",
        "pps_out",
        "rekey_at",
        "expire_at",
        "installed_at",
        "established_at",
        "sampled_at",
        "history_in",
        "history_out",
        "search",
        "seen",
        "last",
    )

    def __init__(self, key: RowKey, kind: str, connection: str, child: str) -> None:
        self.key = key
        self.kind = kind
        self.connection = connection
        self.child = child
        self.state = self.ike_state = ""
        self.local_addr = self.peer = self.local_id = self.remote_id = ""
        self.virtual_ips: tuple[str, ...] = ()  # a road warrior's inner addresses
        self.eap_identity = ""
        self.ike_proposal = self.esp_proposal = self.offload = self.mode = ""
        self.encap = False
        self.spi_in = self.spi_out = self.spi_i = self.spi_r = ""
        self.local_ts: tuple[str, ...] = ()
        self.remote_ts: tuple[str, ...] = ()
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self.bps_in = self.bps_out = self.pps_in = self.pps_out = 0.0
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.installed_at: float | None = None
        self.established_at: float | None = None
        self.sampled_at: float | None = None
        self.history_in: deque[float] = deque(maxlen=HISTORY)
        self.history_out: deque[float] = deque(maxlen=HISTORY)
        self.search = ""
        self.seen = 0
        self.last: Mapping[str, Any] = {}  # the SA as the last poll showed it (detail pane)
        self.ike_rekey_at: float | None = None
        self.children = 0

    @property
    def has_traffic(self) -> bool:
        return self.kind == "child" or self.kind == "ikesa"

    @property
    def name(self) -> str:
        """The control API name of this row's SA: "conn.child" or "conn"."""
        return f"{self.connection}.{self.child}" if self.kind == "child" else self.connection

    @property
    def bps_total(self) -> float:
        return self.bps_in + self.bps_out

    @property
    def bytes_total(self) -> int:
        return self.bytes_in + self.bytes_out


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    width: int
    sort_key: Callable[[Row], Any]
    right: bool = False
    static: bool = False  # values never change for a row: no re-sort at every poll


def _none_last(value: float | None) -> float:
    return float("inf") if value is None else value


COLUMNS: tuple[Column, ...] = (
    Column("connection", "Connection", 16, lambda r: (r.connection, r.child), static=True),
    Column("child", "Child", 12, lambda r: (r.child, r.connection), static=True),
    Column("state", "State", 11, lambda r: r.state),
    Column("peer", "Peer", 18, lambda r: r.peer, static=True),
    Column("esp", "Algorithms", 18, lambda r: r.esp_proposal or r.ike_proposal, static=True),
    Column("offload", "Offload", 7, lambda r: r.offload),
    Column("bps_in", "In bit/s", 10, lambda r: r.bps_in, right=True),
    Column("bps_out", "Out bit/s", 10, lambda r: r.bps_out, right=True),
    Column("pps_in", "In pkt/s", 9, lambda r: r.pps_in, right=True),
    Column("pps_out", "Out pkt/s", 9, lambda r: r.pps_out, right=True),
    Column("bytes_in", "Bytes in", 9, lambda r: r.bytes_in, right=True),
    Column("bytes_out", "Bytes out", 9, lambda r: r.bytes_out, right=True),
    Column("rekey", "Rekey in", 8, lambda r: _none_last(r.rekey_at), right=True),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)


def _num(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


class SaModel:
    """All rows, the current filter and sort, and the visible order (`view`)."""

    def __init__(self) -> None:
        self.rows: dict[RowKey, Row] = {}
        self.view: list[Row] = []
        self.filter = ""
        self.sort_key = "connection"
        self.sort_reverse = False
        self._generation = 0
        self._sorted: list[Row] = []  # every row in sort order; `view` filters it
        self._reshaped = True  # rows were added or removed, or the sort changed
        self.group = "child"  # "child": one row per Child SA; "ike": one per IKE SA
        self.ike_rows: dict[RowKey, Row] = {}  # the "ikesa" rows of the IKE SA view
        self._agg_pass = 0

    # -- updating ------------------------------------------------------------------------

    def update(
        self, ike_sas: Sequence[Mapping[str, Any]], conns: Sequence[Mapping[str, Any]], now: float
    ) -> None:
        """Apply one poll of list-sas (and the last list-conns) taken at `now`."""
        self._generation += 1
        gen = self._generation
        rows = self.rows
        with_sa: set[str] = set()
        for ike in ike_sas:
            if not isinstance(ike, Mapping):
                continue
            conn = str(ike.get("connection", ""))
            with_sa.add(conn)
            spi_i = str(ike.get("spi_i", ""))
            ike_state = str(ike.get("state", ""))
            peer = str(ike.get("remote_addr", ""))
            ike_rekey = _time(ike.get("rekey_at"))
            children = ike.get("children") or ()
            if not children:
                row = rows.get(("ike", spi_i, ""))
                if row is None:
                    row = rows[("ike", spi_i, "")] = Row(("ike", spi_i, ""), "ike", conn, "")
                    self._reshaped = True
                    self._fill_ike(row, ike)
                    row.search = (
                        f"{conn} {row.peer} {row.remote_id} {row.eap_identity} "
                        f"{' '.join(row.virtual_ips)}"
                    ).lower()
                row.state = row.ike_state = ike_state
                row.rekey_at = _time(ike.get("rekey_at"))
                row.established_at = _time(ike.get("established_at"))
                row.seen = gen
                continue
            for child in children:
                if child.__class__ is not dict and not isinstance(child, Mapping):
                    continue
                # The hot loop (10,000 Child SAs per poll): exact-type checks, no calls.
                g = child.get
                spi = g("spi_in", "")
                key = ("child", spi_i, spi if spi.__class__ is str else str(spi))
                row = rows.get(key)
                if row is None:
                    name = str(g("name", ""))
                    row = rows[key] = Row(key, "child", conn, name)
                    self._fill_ike(row, ike)
                    self._fill_child(row, child)
                    row.search = (
                        f"{conn} {name} {row.peer} {row.remote_id} {row.eap_identity} "
                        f"{' '.join(row.virtual_ips)} {row.esp_proposal} "
                        f"{' '.join(row.remote_ts)}"
                    ).lower()
                    self._reshaped = True
                row.seen = gen
                row.last = child
                v = g("state", "")
                row.state = v if v.__class__ is str else str(v)
                row.ike_state = ike_state
                row.ike_rekey_at = ike_rekey
                if row.peer != peer:  # the peer moved (MOBIKE, NAT rebinding)
                    row.peer = peer
                    row.search = f"{row.search} {peer.lower()}"
                v = g("rekey_at")
                row.rekey_at = v if v.__class__ is float else _time(v)
                v = g("offload", "")
                row.offload = v if v.__class__ is str else str(v)
                b_in, b_out = g("bytes_in", 0), g("bytes_out", 0)
                p_in, p_out = g("packets_in", 0), g("packets_out", 0)
                if b_in.__class__ is not int or b_in < 0:
                    b_in = 0
                if b_out.__class__ is not int or b_out < 0:
                    b_out = 0
                if p_in.__class__ is not int or p_in < 0:
                    p_in = 0
                if p_out.__class__ is not int or p_out < 0:
                    p_out = 0
                last = row.sampled_at
                if last is not None and now > last:
                    # a counter that went down (SA replaced under the same SPI): rate 0
                    inv = 1.0 / (now - last)
                    d = b_in - row.bytes_in
                    row.bps_in = bps = d * 8 * inv if d > 0 else 0.0
                    row.history_in.append(bps)
                    d = b_out - row.bytes_out
                    row.bps_out = bps = d * 8 * inv if d > 0 else 0.0
                    row.history_out.append(bps)
                    d = p_in - row.packets_in
                    row.pps_in = d * inv if d > 0 else 0.0
                    d = p_out - row.packets_out
                    row.pps_out = d * inv if d > 0 else 0.0
                row.sampled_at = now
                row.bytes_in, row.bytes_out = b_in, b_out
                row.packets_in, row.packets_out = p_in, p_out
        for conn_cfg in conns:
            name = str(conn_cfg.get("name", "")) if isinstance(conn_cfg, Mapping) else ""
            if not name or name in with_sa:
                continue
            key = ("conn", name, "")
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(key, "conn", name, "")
                self._reshaped = True
                row.peer = ", ".join(_strs(conn_cfg.get("remote_addrs")))
                row.remote_id = str(conn_cfg.get("remote_id", "") or "")
                row.ike_proposal = ", ".join(_strs(conn_cfg.get("ike_proposals")))
                row.search = f"{name} {row.peer} {row.remote_id}".lower()
            row.state = _idle_state(conn_cfg)
            row.seen = gen
        gone = [k for k, r in rows.items() if r.seen != gen]
        for key in gone:
            del rows[key]
        if gone:
            self._reshaped = True
        if self.group == "ike":
            self._aggregate(sample=True)
        self.refresh_view()

    def _aggregate(self, sample: bool) -> None:
        """(Re)compute the IKE SA view's rows from the Child SA rows."""
        agg = self.ike_rows
        self._agg_pass -= 1  # negative: never equal to a child row generation
        mark = self._agg_pass
        for row in self.rows.values():
            if row.kind != "child":
                continue
            key = ("ikesa", row.spi_i, "")
            a = agg.get(key)
            if a is None:
                a = agg[key] = Row(key, "ikesa", row.connection, "")
                a.local_addr, a.peer, a.local_id = row.local_addr, row.peer, row.local_id
                a.remote_id, a.ike_proposal = row.remote_id, row.ike_proposal
                a.virtual_ips, a.eap_identity = row.virtual_ips, row.eap_identity
                a.spi_i, a.spi_r = row.spi_i, row.spi_r
                a.search = (
                    f"{row.connection} {row.peer} {row.remote_id} {row.eap_identity} "
                    f"{' '.join(row.virtual_ips)}"
                ).lower()
                self._reshaped = True
            if a.seen != mark:
                a.seen = mark
                a.state = a.ike_state = row.ike_state
                a.peer = row.peer
                a.rekey_at = row.ike_rekey_at
                a.bytes_in = a.bytes_out = a.packets_in = a.packets_out = a.children = 0
                a.bps_in = a.bps_out = a.pps_in = a.pps_out = 0.0
            a.children += 1
            a.bytes_in += row.bytes_in
            a.bytes_out += row.bytes_out
            a.packets_in += row.packets_in
            a.packets_out += row.packets_out
            a.bps_in += row.bps_in
            a.bps_out += row.bps_out
            a.pps_in += row.pps_in
            a.pps_out += row.pps_out
        gone = [k for k, a in agg.items() if a.seen != mark]
        for key in gone:
            del agg[key]
        if gone:
            self._reshaped = True
        for a in agg.values():
            a.child = f"{a.children} child" + ("" if a.children == 1 else "ren")
            if sample:
                a.history_in.append(a.bps_in)
                a.history_out.append(a.bps_out)

    def set_group(self, group: str) -> None:
        """'child': a row per Child SA; 'ike': a row per IKE SA (children summed)."""
        if group not in ("child", "ike"):
            raise ValueError(f"no grouping {group!r}")
        self.group = group
        if group == "ike":
            self._aggregate(sample=False)
        else:
            self.ike_rows.clear()
        self._reshaped = True
        self.refresh_view()

    @staticmethod
    def _fill_ike(row: Row, ike: Mapping[str, Any]) -> None:
        row.local_addr = str(ike.get("local_addr", ""))
        row.peer = str(ike.get("remote_addr", ""))
        row.local_id = str(ike.get("local_id", ""))
        row.remote_id = str(ike.get("remote_id", ""))
        row.virtual_ips = _strs(ike.get("virtual_ips"))
        row.eap_identity = str(ike.get("eap_identity", "") or "")
        row.ike_proposal = str(ike.get("ike_proposal", ""))
        row.spi_i = str(ike.get("spi_i", ""))
        row.spi_r = str(ike.get("spi_r", ""))
        row.expire_at = _time(ike.get("expire_at"))

    @staticmethod
    def _fill_child(row: Row, child: Mapping[str, Any]) -> None:
        row.esp_proposal = str(child.get("esp_proposal", ""))
        row.mode = str(child.get("mode", ""))
        row.encap = bool(child.get("encap", False))
        row.spi_in = str(child.get("spi_in", ""))
        row.spi_out = str(child.get("spi_out", ""))
        row.local_ts = _strs(child.get("local_ts"))
        row.remote_ts = _strs(child.get("remote_ts"))
        row.installed_at = _time(child.get("installed_at"))
        row.expire_at = _time(child.get("expire_at"))

    # -- view ----------------------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        self.filter = text.strip().lower()
        self.refresh_view()

    def set_sort(self, key: str, reverse: bool | None = None) -> None:
        if key not in COLUMN_KEYS:
            raise ValueError(f"no column {key!r}")
        if reverse is None:
            reverse = not self.sort_reverse if key == self.sort_key else False
        self.sort_key, self.sort_reverse = key, reverse
        self._reshaped = True
        self.refresh_view()

    def refresh_view(self) -> None:
        """Sort (only when rows came or went, or the sort column's values move), filter."""
        column = COLUMNS[COLUMN_KEYS.index(self.sort_key)]
        if self._reshaped or not column.static:
            rows: Iterable[Row] = self.rows.values()
            if self.group == "ike":
                rows = [*self.ike_rows.values(), *(r for r in rows if r.kind != "child")]
            self._sorted = sorted(rows, key=column.sort_key, reverse=self.sort_reverse)
            self._reshaped = False
        q = self.filter
        if q:
            self.view = [r for r in self._sorted if q in r.search or q in r.state.lower()]
        else:
            self.view = self._sorted


# -- formatting ------------------------------------------------------------------------

_UNITS = ("", "k", "M", "G", "T", "P")


def human(value: float, unit: str = "", base: float = 1000.0) -> str:
    """1234567 -> '1.2 M' + unit; three significant digits, SI prefixes."""
    v = float(value)
    i = 0
    while abs(v) >= base and i < len(_UNITS) - 1:
        v /= base
        i += 1
    if i == 0:
        text = f"{v:.0f}"
    else:
        text = f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    return f"{text} {_UNITS[i]}{unit}".rstrip()


def human_bytes(value: float) -> str:
    return (
        human(value, "B", 1024.0)
        .replace("kB", "KiB")
        .replace("MB", "MiB")
        .replace("GB", "GiB")
        .replace("TB", "TiB")
        .replace("PB", "PiB")
    )


def duration(seconds: float | None) -> str:
    """Remaining time, compact: '45s', '12m', '3h05m', '2d04h'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def cell(row: Row, key: str, now: float) -> str:
    """The text of one table cell."""
    if key == "connection":
        return row.connection
    if key == "child":
        return row.child or ("(IKE)" if row.kind == "ike" else "-")
    if key == "state":
        return row.state
    if key == "peer":
        return row.peer
    if key == "esp":
        return row.esp_proposal or row.ike_proposal
    if key == "offload":
        return row.offload or "-"
    if not row.has_traffic:
        if key == "rekey" and row.rekey_at is not None:
            return duration(row.rekey_at - now)
        return "-"
    if key == "bps_in":
        return human(row.bps_in)
    if key == "bps_out":
        return human(row.bps_out)
    if key == "pps_in":
        return human(row.pps_in)
    if key == "pps_out":
        return human(row.pps_out)
    if key == "bytes_in":
        return human_bytes(row.bytes_in)
    if key == "bytes_out":
        return human_bytes(row.bytes_out)
    if key == "rekey":
        return "-" if row.rekey_at is None else duration(row.rekey_at - now)
    raise KeyError(key)


_SECRET_WORDS = frozenset(
    (
        "key",
        "keys",
        "privkey",
        "psk",
        "secret",
        "secrets",
        "password",
        "passphrase",
        "token",
        "sk",
        "keymat",
        "nonce",
    )
)


def is_secret_field(name: str) -> bool:
    """'encr_key_in', 'psk', 'SK_ei' are; 'rekey_at' is not (whole words only)."""
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z]+", name.lower()))


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop fields whose name says key material, whatever the gateway sent."""
    return {k: v for k, v in fields.items() if not is_secret_field(str(k))}


def format_event(event: Mapping[str, Any]) -> str:
    """One event-log line: 'HH:MM:SS type connection k=v ...' (secrets dropped)."""
    fields = redact(event)
    when = _time(fields.pop("time", None))
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) if when is not None else "--:--:--"
    kind = str(fields.pop("type", "event"))
    conn = fields.pop("connection", None)
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, "", [], {}))
    return " ".join(p for p in (stamp, kind, str(conn) if conn else "", rest) if p)


def _idle_state(conn: Mapping[str, Any]) -> str:
    """A connection without an SA: "trapped" when one of its Children waits in a trap
    (list-conns `children[].trap`, start_action = "trap"), else "down"."""
    for child in conn.get("children") or ():
        trap = child.get("trap") if isinstance(child, Mapping) else None
        if isinstance(trap, Mapping) and trap.get("state") in ("TRAPPED", "BACKOFF"):
            return "trapped"
    return "down"
