"""A scripted stand-in for the IKE engine (FakeEngine) and a recording `none` data plane,
for the unit tests of the daemon's wiring: an initiation completes at the engine's next
timer, deletes complete at once, connections named `bad*` fail authentication."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gateway.dataplane.base import DataplaneError, Installed
from gateway.dataplane.none import NoneDataplane
from ike import config as ike_config
from ike import events as ev
from ike.ts import ts_from_text


class FakeEngine:
    """Scripted engine: an initiation completes at its next timer; deletes complete at once.

    Connections named `bad*` fail authentication. It records every call it receives."""

    def __init__(self, connections: Sequence[ike_config.ConnectionConfig]) -> None:
        self.connections = {c.name: c for c in connections}
        self.calls: list[tuple[Any, ...]] = []
        self.out: list[ev.Datagram] = []
        self.events: list[ev.Event] = []
        self.pending: list[tuple[int, str, str | None]] = []
        self.children: dict[int, list[ev.ChildSaEstablished]] = {}
        self.next_id = 1
        self.timer: float | None = None
        self.next_spi = 0xC0000001
        self.names: dict[int, str] = {}

    def receive_datagram(
        self, data: bytes, addr: tuple[tuple[str, int], tuple[str, int]], now: float
    ) -> None:
        self.calls.append(("receive", data, addr))

    def peer_dies(self, ike_sa: int, now: float) -> None:
        """As the engine reports a failed DPD check: each Child's dpd_action."""
        conn = self.connections[self.names[ike_sa]]
        actions = tuple(
            (c.child, next(x.dpd_action for x in conn.children if x.name == c.child))
            for c in self.children.get(ike_sa, [])
        )
        self._gone(
            ike_sa,
            "dead peer",
            now,
            ev.DpdFailed(ike_sa, conn.name, ("127.0.0.2", 500), actions, now),
        )

    def handle_timer(self, now: float) -> None:
        self.timer = None
        for ike_sa, name, child in self.pending:
            conn = self.connections[name]
            if name.startswith("bad"):
                self.events.append(
                    ev.IkeSaFailed(ike_sa, name, ("127.0.0.2", 500), "AUTHENTICATION_FAILED", now)
                )
                continue
            local, remote = ("127.0.0.1", 500), (conn.remote_addrs[0], 500)
            self.events.append(
                ev.IkeSaEstablished(
                    ike_sa,
                    name,
                    True,
                    b"\x11" * 8,
                    b"\x22" * 8,
                    local,
                    remote,
                    conn.local_id,
                    conn.remote_id,
                    "aes256gcm16-prfsha384-x25519",
                    False,
                    now,
                    mobike=True,
                    additional_addrs=("127.0.0.9",),
                )
            )
            self.children[ike_sa] = []
            for c in conn.children:
                if child is None or c.name == child:
                    self._child(ike_sa, name, c, now)
                    break
        self.pending.clear()

    def _child(self, ike_sa: int, name: str, c: ike_config.ChildConfig, now: float) -> None:
        spi_in, spi_out = self.next_spi, self.next_spi + 1
        self.next_spi += 2
        child = ev.ChildSaEstablished(
            ike_sa,
            name,
            c.name,
            True,
            spi_in,
            spi_out,
            c.mode,
            "127.0.0.1",
            "127.0.0.2",
            None,
            tuple(ts_from_text(t) for t in c.local_ts),
            tuple(ts_from_text(t) for t in c.remote_ts),
            "aes256gcm16",
            "rfc4106(gcm(aes))",
            128,
            None,
            0,
            False,
            b"k" * 36,
            b"K" * 36,
            b"",
            b"",
            now,
        )
        self.children[ike_sa].append(child)
        self.events.append(child)

    def initiate(
        self, connection: str, child: str | None, now: float, *, packet_ts: Any = None
    ) -> int:
        self.calls.append(("initiate", connection, child))
        ike_sa = self.next_id
        self.next_id += 1
        self.names[ike_sa] = connection
        conn = self.connections[connection]
        self.out.append(
            ev.Datagram(b"IKE_SA_INIT", ("127.0.0.1", 500), (conn.remote_addrs[0], 500))
        )
        self.pending.append((ike_sa, connection, child))
        self.timer = now + 0.01
        return ike_sa

    def delete_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None:
        self.calls.append(("delete_child", ike_sa, spi_in))
        for child in list(self.children.get(ike_sa, [])):
            if child.spi_in == spi_in:
                self.children[ike_sa].remove(child)
                self.events.append(
                    ev.ChildSaDeleted(
                        ike_sa, child.connection, child.child, spi_in, child.spi_out, "deleted", now
                    )
                )

    # Engine calls these tests never expect: recorded, so an unexpected one shows in `calls`
    def create_child_sa(
        self, ike_sa: int, child: str | None, now: float, *, packet_ts: Any = None
    ) -> None:
        self.calls.append(("create_child", ike_sa, child))

    def rekey_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None:
        self.calls.append(("rekey_child", ike_sa, spi_in))

    def rekey_ike_sa(self, ike_sa: int, now: float) -> None:
        self.calls.append(("rekey_ike", ike_sa))

    def redirect_ike_sa(self, ike_sa: int, gateway: str, now: float) -> None:
        self.calls.append(("redirect", ike_sa, gateway))

    def delete_ike_sa(self, ike_sa: int, now: float) -> None:
        self.calls.append(("delete_ike", ike_sa))
        self.out.append(
            ev.Datagram(b"INFORMATIONAL-DELETE", ("127.0.0.1", 500), ("127.0.0.2", 500))
        )
        self._gone(ike_sa, "deleted", now)

    def _gone(self, ike_sa: int, reason: str, now: float, dead: ev.DpdFailed | None = None) -> None:
        """The IKE SA ends: its Child SAs first, then itself (as the engine reports it)."""
        for c in self.children.pop(ike_sa, []):
            self.events.append(
                ev.ChildSaDeleted(ike_sa, c.connection, c.child, c.spi_in, c.spi_out, reason, now)
            )
        if dead is not None:
            self.events.append(dead)
        spis = (b"\x11" * 8, b"\x22" * 8)
        self.events.append(ev.IkeSaDeleted(ike_sa, self.names[ike_sa], *spis, reason, now))

    def update_addresses(
        self, ike_sa: int, local: str | None, remote: str | None, now: float
    ) -> None:
        """MOBIKE: the peer accepts any move but one to 127.0.0.66 (an error answer)."""
        self.calls.append(("update_addresses", ike_sa, local, remote))
        old_local, old_remote = ("127.0.0.1", 4500), ("127.0.0.2", 4500)
        new_local = (local or old_local[0], 4500)
        new_remote = (remote or old_remote[0], 4500)
        name = self.names[ike_sa]
        if remote == "127.0.0.66":
            self.events.append(
                ev.IkeSaMigrateFailed(
                    ike_sa, name, new_local, new_remote, "UNACCEPTABLE_ADDRESSES", now
                )
            )
            return
        children = tuple((c.spi_in, c.spi_out) for c in self.children.get(ike_sa, []))
        self.events.append(
            ev.IkeSaMigrated(
                ike_sa,
                name,
                old_local,
                old_remote,
                new_local,
                new_remote,
                True,
                (4500, 4500),
                children,
                ("127.0.0.9",),
                now,
            )
        )

    def set_connections(self, connections: Sequence[ike_config.ConnectionConfig]) -> None:
        self.calls.append(("set_connections", tuple(c.name for c in connections)))
        self.connections = {c.name: c for c in connections}

    def datagrams_to_send(self) -> Iterable[ev.Datagram]:
        out, self.out = self.out, []
        return out

    def next_timer(self) -> float | None:
        return self.timer

    def next_event(self) -> ev.Event | None:
        return self.events.pop(0) if self.events else None


class RecordingDataplane(NoneDataplane):
    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False
        self.removed: list[int] = []

    def install(self, child: Any, config: Any) -> Installed:
        if self.fail_next:
            self.fail_next = False
            raise DataplaneError("NEWSA: Requested AEAD algorithm not found")
        return super().install(child, config)

    def remove(self, installed: Installed) -> None:
        self.removed.append(installed.spi_in)
        super().remove(installed)
