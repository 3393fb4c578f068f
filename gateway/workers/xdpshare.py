"""`[gateway.xdp]` with `[gateway] workers` > 1: one set of XDP/TC programs, N workers
(docs/daemon.md "Workers", docs/bpf.md "Workers").

Theory of operation
-------------------
The programs and their maps exist once per interface, and the loader (bpf.loader.
AttachedPrograms) keeps Python-side bookkeeping next to the maps (which SPIs sit in which slot,
which prefixes are set), so there is exactly one owner: the supervisor. It compiles and
attaches the programs (gateway.xdp.XdpAdapter.open) before it starts any worker, reads
the verdict and MSS counters for `stats` and the metrics once, and detaches after the
last worker has stopped.

Each worker runs the ordinary XdpAdapter (engine events -> loader calls) with two
changes: its SlotSpis makes slots and SPIs of its own share (slot mod N = SPI mod N =
worker index: bpf/spi.py), and its loader is a `RemoteLoader`, which forwards each map
update over a socketpair of its own to the supervisor (one JSON line each way,
blocking: a Child SA install waits for its map updates as it waits for its XFRM
netlink ack; the supervisor answers from its event loop, which the worker never holds).

Counters: a worker's counter read (gateway/daemon/traffic.py) asks for its slots'
counters in one request (`slot_counters_bulk`); the supervisor reads the whole slot
table once per counters_interval (one bpf(2) call, shared by every worker's request in
that time) and answers with the worker's share and the steering CPU of its slots.

The supervisor's `XdpShare` applies the calls to the loader and keeps a ledger per
worker: the slots (SPIs, remote prefixes) and excluded prefixes each one installed. It
refuses a slot outside the worker's share, counts excluded prefixes over all workers
(a prefix two workers exclude stays excluded until both let go), and when a worker's
link closes (exit, crash, SIGKILL) it removes everything that worker left, before the
successor is started, so the successor starts from empty slots of its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.dataplane.xdp import XdpAdapter

log = logging.getLogger("gateway.workers")

MAX_LINE: Final = 1 << 20
MAX_BULK_LINE: Final = 1 << 28  # a bulk counter answer: 8 columns of up to 2**20 slots


# --------------------------------------------------------------------------- worker side


class RemoteLoader:
    """The XdpLoader a worker uses: each call is a request to the supervisor's XdpShare
    (blocking, on the worker's own socketpair). Attaching, detaching and the
    interface-wide counters are the supervisor's: open/close only (dis)connect."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file: Any = None
        self._attachments: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()  # the counter read runs in a thread of its own
        self._cpus: dict[int, int] = {}  # slot -> steering CPU, as of the last bulk read

    def _call(self, op: str, **args: Any) -> Any:
        from bpf.loader import BpfError

        with self._lock:
            if self._file is None:
                raise BpfError("the XDP link to the supervisor is closed")
            try:
                self._sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
                line = self._file.readline(MAX_BULK_LINE)
            except OSError as exc:
                raise BpfError(f"XDP link to the supervisor: {exc.strerror or exc}") from None
        if not line:
            raise BpfError("the supervisor closed the XDP link")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BpfError(str(reply.get("error", "refused")))
        return reply.get("result")

    def open(self) -> None:
        self._sock.setblocking(True)
        self._file = self._sock.makefile("rb")
        self._attachments = [tuple(a) for a in self._call("attachments")]  # type: ignore[misc]

    def close(self) -> None:
        """Our Child SAs are removed already (shutdown deletes them); the supervisor
        removes whatever is left when the link closes."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._sock.close()

    def attachments(self) -> list[tuple[str, str, str]]:
        return list(self._attachments)

    def install_child_sa(
        self,
        slot: int,
        *,
        spi_in: int,
        spi_out: int,
        remote_ts: Sequence[str],
        mtu: int,
        offloaded: bool = False,
    ) -> None:
        self._call(
            "install_child_sa",
            slot=slot,
            spi_in=spi_in,
            spi_out=spi_out,
            remote_ts=list(remote_ts),
            mtu=mtu,
            offloaded=offloaded,
        )

    def remove_child_sa_spis(self, *, spi_in: int, spi_out: int) -> None:
        self._call("remove_child_sa_spis", spi_in=spi_in, spi_out=spi_out)

    def remove_child_sa(
        self, slot: int, *, spi_in: int, spi_out: int, remote_ts: Sequence[str]
    ) -> None:
        self._call(
            "remove_child_sa", slot=slot, spi_in=spi_in, spi_out=spi_out, remote_ts=list(remote_ts)
        )

    def exclude_prefix(self, prefix: str) -> None:
        self._call("exclude_prefix", prefix=prefix)

    def remove_clamp_prefix(self, prefix: str) -> None:
        self._call("remove_clamp_prefix", prefix=prefix)

    def slot_counters(self, slot: int) -> Any:
        from bpf.loader import SlotCounters

        return SlotCounters(**self._call("slot_counters", slot=slot))

    def slot_counters_bulk(self, upto: int | None = None) -> Any:
        """Our slots' counters below `upto` (the other workers' slots read 0), from the
        supervisor's one read of the whole table."""
        from bpf.loader import SlotTable

        reply = self._call("slot_counters_bulk", upto=upto or 0)
        first, stride, count = reply["first"], reply["stride"], reply["count"]
        columns = []
        for values in reply["columns"]:
            column = [0] * count
            column[first::stride] = values
            columns.append(column)
        self._cpus = {int(slot): cpu for slot, cpu in reply["cpus"].items()}
        return SlotTable(columns)

    def slot_cpu(self, slot: int) -> int | None:
        return self._cpus.get(slot)

    def steered(self) -> dict[int, int]:
        return {}  # interface-wide: read once, by the supervisor

    def update_settings(self, **settings: Any) -> None:
        """The supervisor applies [gateway.xdp] changes to the programs on its reload."""

    def verdicts(self) -> Sequence[Any]:
        return []  # interface-wide: read once, by the supervisor

    def mss_clamped(self) -> dict[str, int]:
        return {}


# --------------------------------------------------------------------------- supervisor side


@dataclass(slots=True)
class _Slot:
    spis: dict[int, int] = field(default_factory=dict)  # spi_in -> spi_out
    remote: tuple[str, ...] = ()


@dataclass(slots=True)
class _Ledger:
    """What one worker (one link) installed."""

    index: int
    slots: dict[int, _Slot] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)


class XdpShare:
    """The supervisor's side: the one XdpAdapter (attached programs) and the workers'
    map updates applied to its loader."""

    def __init__(self, adapter: XdpAdapter, workers: int, interval: float = 1.0) -> None:
        self.adapter = adapter
        self.workers = workers
        self.interval = interval  # [gateway] counters_interval: one table serves that long
        self._ledgers: dict[int, _Ledger] = {}
        self._excluded: dict[str, int] = {}  # prefix -> holders over all workers
        self._links: dict[int, asyncio.Task[None]] = {}
        self._table: Any = None  # the last slot table read, and when
        self._table_at = -math.inf

    @property
    def loader(self) -> Any:
        dp = self.adapter.loader
        if dp is None:
            raise RuntimeError("the XDP programs are not attached")
        return dp

    # links -------------------------------------------------------------------------

    def serve(self, index: int, sock: socket.socket) -> None:
        """Serve worker `index`'s link (a new worker: what a predecessor left is gone
        first)."""
        self.forget(index)
        self._ledgers[index] = _Ledger(index)
        self._links[index] = asyncio.get_running_loop().create_task(self._serve(index, sock))

    async def _serve(self, index: int, sock: socket.socket) -> None:
        ledger = self._ledgers[index]
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        except OSError:
            return
        try:
            while line := await reader.readline():
                reply = self.handle(ledger, line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError):
            pass  # a broken link: the worker is gone (its leftovers go in forget)
        finally:
            writer.close()
            if self._ledgers.get(index) is ledger:
                self._clear(ledger)

    def forget(self, index: int) -> None:
        """Remove everything worker `index` installed (its link is closed or about to
        be replaced)."""
        task = self._links.pop(index, None)
        if task is not None:
            task.cancel()
        ledger = self._ledgers.pop(index, None)
        if ledger is not None:
            self._clear(ledger)

    async def close(self) -> None:
        for index in list(self._links):
            self.forget(index)
        # (the cancelled link tasks end on their own; nothing else is left to await)
        await asyncio.sleep(0)

    # requests ----------------------------------------------------------------------

    def handle(self, ledger: _Ledger, line: bytes) -> dict[str, Any]:
        from bpf.loader import BpfError

        try:
            request = json.loads(line)
            op, args = request["op"], request.get("args", {})
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
            result = self._apply(ledger, str(op), args)
        except BpfError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"bad XDP request: {exc}"}
        return {"ok": True, "result": result}

    def _own(self, ledger: _Ledger, slot: int) -> int:
        from bpf.loader import BpfError

        slot = int(slot)
        if slot % self.workers != ledger.index:
            raise BpfError(f"slot {slot} is not worker {ledger.index}'s (slot mod {self.workers})")
        return slot

    def _apply(self, ledger: _Ledger, op: str, args: dict[str, Any]) -> Any:
        dp = self.loader
        if op == "attachments":
            return [list(a) for a in dp.attachments()]
        if op == "slot_counters":
            return dataclasses.asdict(dp.slot_counters(int(args["slot"])))
        if op == "slot_counters_bulk":
            return self._bulk(ledger, int(args["upto"]))
        if op == "install_child_sa":
            slot = self._own(ledger, args["slot"])
            remote = tuple(str(p) for p in args["remote_ts"])
            spi_in, spi_out = int(args["spi_in"]), int(args["spi_out"])
            dp.install_child_sa(
                slot,
                spi_in=spi_in,
                spi_out=spi_out,
                remote_ts=remote,
                mtu=int(args["mtu"]),
                offloaded=bool(args.get("offloaded", False)),
            )
            entry = ledger.slots.setdefault(slot, _Slot())
            entry.spis[spi_in] = spi_out
            entry.remote = remote
            return None
        if op == "remove_child_sa_spis":
            spi_in, spi_out = int(args["spi_in"]), int(args["spi_out"])
            dp.remove_child_sa_spis(spi_in=spi_in, spi_out=spi_out)
            for entry in ledger.slots.values():
                entry.spis.pop(spi_in, None)
            return None
        if op == "remove_child_sa":
            slot = self._own(ledger, args["slot"])
            remote = tuple(str(p) for p in args["remote_ts"])
            ledger.slots.pop(slot, None)
            dp.remove_child_sa(
                slot, spi_in=int(args["spi_in"]), spi_out=int(args["spi_out"]), remote_ts=remote
            )
            return None
        if op == "exclude_prefix":
            prefix = str(args["prefix"])
            if not self._excluded.get(prefix):
                dp.exclude_prefix(prefix)
            self._excluded[prefix] = self._excluded.get(prefix, 0) + 1
            ledger.excluded[prefix] = ledger.excluded.get(prefix, 0) + 1
            return None
        if op == "remove_clamp_prefix":
            prefix = str(args["prefix"])
            if not ledger.excluded.get(prefix):
                raise ValueError(f"prefix {prefix} was not excluded by this worker")
            self._unexclude(ledger, prefix)
            return None
        raise ValueError(f"unknown operation {op!r}")

    def _bulk(self, ledger: _Ledger, upto: int) -> dict[str, Any]:
        """A worker's share of the slot table (read at most once per interval for all
        workers) and the steering CPU of each of its slots."""
        from bpf.loader import SLOT_FIELDS

        dp = self.loader
        now = time.monotonic()
        table = self._table
        if table is None or len(table) < upto or now - self._table_at >= self.interval:
            table = self._table = dp.slot_counters_bulk(max(upto, 1))
            self._table_at = now
        count = min(upto, len(table))
        cpus = {}
        for slot in ledger.slots:
            cpu = dp.slot_cpu(slot)
            if cpu is not None:
                cpus[str(slot)] = cpu
        return {
            "first": ledger.index,
            "stride": self.workers,
            "count": count,
            "columns": [table.column(f)[ledger.index : count : self.workers] for f in SLOT_FIELDS],
            "cpus": cpus,
        }

    def _unexclude(self, ledger: _Ledger, prefix: str) -> None:
        ledger.excluded[prefix] -= 1
        if not ledger.excluded[prefix]:
            del ledger.excluded[prefix]
        left = self._excluded.get(prefix, 0) - 1
        if left > 0:
            self._excluded[prefix] = left
            return
        self._excluded.pop(prefix, None)
        self.loader.remove_clamp_prefix(prefix)

    def _clear(self, ledger: _Ledger) -> None:
        """A worker's leftovers out of the maps (its link closed)."""
        from bpf.loader import BpfError

        if self.adapter.loader is None:
            return
        dp = self.loader
        left = len(ledger.slots)
        for slot, entry in list(ledger.slots.items()):
            pairs = list(entry.spis.items())
            with contextlib.suppress(BpfError):
                for spi_in, spi_out in pairs[1:]:
                    dp.remove_child_sa_spis(spi_in=spi_in, spi_out=spi_out)
                spi_in, spi_out = pairs[0] if pairs else (0, 0)
                dp.remove_child_sa(slot, spi_in=spi_in, spi_out=spi_out, remote_ts=entry.remote)
        ledger.slots.clear()
        for prefix, count in list(ledger.excluded.items()):
            for _ in range(count):
                with contextlib.suppress(BpfError):
                    self._unexclude(ledger, prefix)
        if left:
            log.info("event=xdp-worker-cleared worker=%d slots=%d", ledger.index, left)
