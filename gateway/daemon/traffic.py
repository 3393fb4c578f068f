"""Per-SA counters for list-sas, stats, /metrics and the console: one read serves the
scrapes and polls of an interval, it runs off the event loop, and no traffic is lost
when an SA goes (docs/daemon.md "Counters", docs/metrics.md).

Theory of operation
-------------------
A read (`refresh()`) takes every SA's counters at once: the XDP programs' slot table
(one bpf(2) call, with [gateway.xdp]) and the data plane's table (XFRM: one GETSA dump
on a socket of its own). It runs in a thread, so the event loop keeps serving IKE
meanwhile; one read at a time (a scrape or poll that comes while one runs waits for
it), and a read younger than `[gateway] counters_interval` is reused.

A Child SA's counters are cumulative over its life, rekeys included:
- traffic, when its ESP is counted by an XDP slot (a WAN interface is set): the slot's
  ESP counters (a rekeyed SA keeps its slot, so they carry on by themselves);
- otherwise: what its SAs that are gone counted (`ChildRecord.carried`: each SA's
  counters read just before it went, or the kernel's final count at a hard expiry)
  plus its live SAs in the data plane's table;
- replay and integrity errors: always the data plane's (XDP sees ESP before it is
  decrypted), the same way as traffic without a slot.

When a Child SA ends its totals go to `gone`, per (connection, child): the series of
/metrics (live Child SAs + gone) never go backwards and lose nothing. With XDP the
slot's final counts come from gateway/daemon/xdpslots.py as the slot is released.

A table read before a Child was recorded may hold its slot's previous user: such a
Child counts from the next read on (`ChildRecord.counter_epoch`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.daemon.feature import Feature, Host
from gateway.daemon.records import ChildRecord
from gateway.dataplane.base import ZERO, Counters
from gateway.errors import GatewayError

ChildKey = tuple[str, str]  # (connection, child)


class Traffic(Feature):
    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.gone: dict[ChildKey, Counters] = {}
        self._table: Any = {}  # the data plane's read_counters()
        self._slots: Any = None  # bpf.loader.SlotTable, or None
        self._started = 0  # reads started so far
        self._epoch = 0  # the read the tables come from (its number)
        self._read_at = -math.inf  # time.monotonic() when it finished
        self._running: asyncio.Future[None] | None = None
        self._failing = False
        self.reads = 0  # completed reads (stats: counter_reads)
        self.read_seconds = 0.0  # their total wall time

    # ------------------------------------------------------------------ reading

    async def refresh(self) -> None:
        """Fresh tables for what follows: the current read if one runs, the last one if
        it is younger than counters_interval, else a new read (off the event loop). The
        read is a task of its own: a caller that gives up (a scrape timing out) does not
        end it, so there is never a second one beside it."""
        running = self._running
        if running is None:
            if time.monotonic() - self._read_at < self.d.config.gateway.counters_interval:
                return
            running = self._running = asyncio.ensure_future(self._read())
            running.add_done_callback(self._read_done)
        await asyncio.shield(running)

    def _read_done(self, task: asyncio.Future[None]) -> None:
        self._running = None
        if not task.cancelled():
            task.exception()  # (_read reports its own failures; nothing else raises)

    async def _read(self) -> None:
        self._started += 1
        epoch = self._started
        xdp = self.d.xdp
        upto = xdp.spis.end if xdp is not None and xdp.attached else 0
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            table, slots = await loop.run_in_executor(None, self._read_tables, upto)
        except GatewayError as exc:  # keep the last tables; the next scrape tries again
            if not self._failing:
                self._failing = True
                self.d.report("counters-read-failed", logging.WARNING, error=exc)
            return
        self._failing = False
        self._table, self._slots, self._epoch = table, slots, epoch
        self._read_at = time.monotonic()
        self.reads += 1
        self.read_seconds += self._read_at - started

    def _read_tables(self, upto: int) -> tuple[Any, Any]:
        """In a thread: the data plane's table, then the slot table."""
        xdp = self.d.xdp
        table = self.d.dataplane.read_counters()
        slots = xdp.slot_table(upto) if xdp is not None and upto else None
        return table, slots

    def _slot_traffic(self) -> bool:
        """Traffic comes from XDP slots: programs attached with a WAN interface."""
        xdp = self.d.xdp
        return xdp is not None and xdp.attached and xdp.config.wan_interface is not None

    # ------------------------------------------------------------------ a Child SA

    def recorded(self, child: ChildRecord) -> None:
        """A Child SA was just recorded: reads started before now may not show it."""
        child.counter_epoch = self._started

    def child(self, c: ChildRecord) -> Counters:
        """A Child SA's counters over its life (rekeys included), from the last read."""
        dp, table = self.d.dataplane, self._table
        total = c.carried
        if c.installed is not None:
            live = dp.counters_in(table, c.installed, outbound=c.sending is None)
            total = live if total is ZERO else total.plus(live)
        if c.sending is not None:
            total = total.plus(dp.counters_in(table, c.sending, inbound=False))
        for old in c.retiring:
            total = total.plus(dp.counters_in(table, old, outbound=False))
        slot = c.xdp_slot
        if slot is not None and self._slot_traffic():
            return self._with_slot(total, slot, c.counter_epoch)
        return total

    def _with_slot(self, errors: Counters, slot: int, since: int) -> Counters:
        """The slot's ESP traffic with the data plane's error counts."""
        slots = self._slots
        if slots is None or self._epoch <= since or slot >= len(slots):
            return Counters(0, 0, 0, 0, errors[4], errors[5], errors[6])
        return Counters(
            slots.column("esp_in_bytes")[slot],
            slots.column("esp_in_packets")[slot],
            slots.column("esp_out_bytes")[slot],
            slots.column("esp_out_packets")[slot],
            errors[4],
            errors[5],
            errors[6],
        )

    def slot_counted(self, child: ChildRecord) -> bool:
        """This Child's traffic is its XDP slot's (so its SAs' traffic is not banked)."""
        return child.xdp_slot is not None and self._slot_traffic()

    def slot_row(self, c: ChildRecord) -> dict[str, int] | None:
        """list-sas `xdp` of a Child SA: its slot and every counter of it (bpf.loader.
        SlotCounters' fields) from the last read (zeros when that read predates the
        Child); None without a slot."""
        from bpf.loader import SLOT_FIELDS

        slots, slot = self._slots, c.xdp_slot
        if slot is None:
            return None
        if slots is None or slot >= len(slots) or self._epoch <= c.counter_epoch:
            return {"slot": slot, **dict.fromkeys(SLOT_FIELDS, 0)}
        return {"slot": slot, **dict(zip(SLOT_FIELDS, slots.row(slot), strict=True))}

    # ------------------------------------------------------------------ SAs that go

    def sa_gone(self, connection: str, child: ChildRecord, counters: Counters) -> None:
        """One SA of a Child is gone (rekeyed away, or the Child ends): what it counted
        stays with the Child, or with (connection, child) once the Child is gone."""
        if child.installed is not None:  # the Child lives on
            child.carried = child.carried.plus(counters)
        else:
            self.bank(connection, child.name, self._bankable(child, counters))

    def child_ended(self, connection: str, child: ChildRecord) -> None:
        """The Child SA is gone: its SAs' counts (read as each went) to (connection,
        child). Its slot's traffic comes with the slot (slot_released)."""
        self.bank(connection, child.name, self._bankable(child, child.carried))
        child.carried = ZERO

    def slot_released(self, connection: str, child: str, counters: Any) -> None:
        """A Child's XDP slot was released: its final ESP counts (bpf SlotCounters)."""
        if not self._slot_traffic():
            return
        self.bank(
            connection,
            child,
            Counters(
                counters.esp_in_bytes,
                counters.esp_in_packets,
                counters.esp_out_bytes,
                counters.esp_out_packets,
            ),
        )

    def _bankable(self, child: ChildRecord, counters: Counters) -> Counters:
        return counters.errors() if self.slot_counted(child) else counters

    def bank(self, connection: str, child: str, counters: Counters) -> None:
        key = (connection, child)
        self.gone[key] = self.gone.get(key, ZERO).plus(counters)

    def gone_total(self) -> Counters:
        total = ZERO
        for counters in self.gone.values():
            total = total.plus(counters)
        return total

    def gone_rows(self) -> Iterator[tuple[ChildKey, Counters]]:
        return iter(self.gone.items())

    # ------------------------------------------------------------------ hooks

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        return dict(zip(Counters._fields, self.child(child), strict=True))

    def stats(self) -> Mapping[str, Any]:
        """`retired`: per "connection.child", what its Child SAs that are gone counted;
        `counter_reads`: reads done and their total time."""
        return {
            "retired": {f"{conn}.{child}": c._asdict() for (conn, child), c in self.gone.items()},
            "counter_reads": {"reads": self.reads, "seconds": round(self.read_seconds, 6)},
        }
