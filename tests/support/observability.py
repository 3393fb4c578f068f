"""Synthetic gateway state in the control API's shapes, for the metrics and TUI tests and
benchmarks (tests/unit/test_metrics*.py, tests/unit/test_ui*.py, bench/bench_metrics.py,
bench/bench_tui.py). Deterministic: the same arguments give the same data."""

from __future__ import annotations

from typing import Any

ESP_PROPOSAL = "AES_GCM_16_256"
IKE_PROPOSAL = "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"


def child_sa(
    name: str,
    index: int,
    *,
    tick: int = 0,
    now: float = 1_700_000_000.0,
    state: str = "INSTALLED",
    offload: str = "none",
) -> dict[str, Any]:
    """One Child SA dict; its counters grow with `tick` at an index-dependent rate."""
    rate = 1000 + (index % 97) * 100  # bytes per tick
    return {
        "name": name,
        "state": state,
        "spi_in": f"c{index:07x}",
        "spi_out": f"d{index:07x}",
        "mode": "tunnel",
        "encap": False,
        "esp_proposal": ESP_PROPOSAL,
        "offload": offload,
        "bytes_in": rate * tick,
        "bytes_out": rate * tick // 2,
        "packets_in": rate * tick // 1000,
        "packets_out": rate * tick // 2000,
        "local_ts": ["10.0.0.0/24"],
        "remote_ts": [f"10.{1 + index // 65536 % 200}.{index // 256 % 256}.{index % 256}/32"],
        "installed_at": now - 60,
        "rekey_at": now + 3000 + index % 600,
        "expire_at": now + 3600,
    }


def ike_sa(
    connection: str,
    index: int,
    children: list[dict[str, Any]],
    *,
    now: float = 1_700_000_000.0,
    state: str = "ESTABLISHED",
) -> dict[str, Any]:
    return {
        "connection": connection,
        "state": state,
        "local_addr": "192.0.2.1",
        "remote_addr": f"198.51.{100 + index // 256 % 100}.{index % 256}",
        "local_id": "gw.example.org",
        "remote_id": f"peer{index}.example.org",
        "spi_i": f"{index:016x}",
        "spi_r": f"{index + 1:016x}",
        "ike_proposal": IKE_PROPOSAL,
        "established_at": now - 120 if state == "ESTABLISHED" else None,
        "rekey_at": now + 10_000,
        "expire_at": now + 14_000,
        "children": children,
    }


def synthetic_ike_sas(
    child_sas: int, *, children_per_ike: int = 2, tick: int = 0, now: float = 1_700_000_000.0
) -> list[dict[str, Any]]:
    """`child_sas` Child SAs spread over IKE SAs of `children_per_ike` each, one IKE SA per
    connection named conn-N, children named net-K."""
    sas = []
    n_ike = -(-child_sas // children_per_ike)
    for i in range(n_ike):
        kids = [
            child_sa(f"net-{k}", i * children_per_ike + k, tick=tick, now=now)
            for k in range(min(children_per_ike, child_sas - i * children_per_ike))
        ]
        sas.append(ike_sa(f"conn-{i}", i, kids, now=now))
    return sas


class FakeGateway:
    """An in-memory gateway behind the ui.source.GatewaySource Protocol.

    `connector()` is the ui Connector; `stop()` makes every call and new connection fail
    like a stopped daemon, `start()` brings it back (a restart). Commands mutate the state
    the next poll shows, and every call is recorded in `calls`."""

    def __init__(
        self,
        ike_sas: list[dict[str, Any]] | None = None,
        conns: list[dict[str, Any]] | None = None,
        *,
        now: float = 1_700_000_000.0,
    ):
        self.ike_sas = ike_sas if ike_sas is not None else []
        self.conns = (
            conns
            if conns is not None
            else [
                {
                    "name": s["connection"],
                    "remote_addrs": [s["remote_addr"]],
                    "remote_id": s["remote_id"],
                    "ike_proposals": [IKE_PROPOSAL],
                    "children": [],
                }
                for s in self.ike_sas
            ]
        )
        self.now = now
        self.up = True
        self.connections = 0
        self.calls: list[tuple[str, str | None]] = []
        self.extra_stats: dict[str, Any] = {}
        self.refuse_stats = False  # stats answers with an error (e.g. a malformed reply)
        self.incremental = True  # False: refuses list-sas `since` as an older gateway would
        self.cursors: list[dict[str, Any] | None] = []  # the `since` of each sa_changes
        self.events: Any = None  # asyncio.Queue once subscribed
        self._next = 1000

    # -- control of the fake -------------------------------------------------------------

    def stop(self) -> None:
        self.up = False
        if self.events is not None:
            self.events.put_nowait(None)

    def start(self) -> None:
        self.up = True

    def push_event(self, **event: Any) -> None:
        assert self.events is not None, "nobody subscribed"
        self.events.put_nowait(event)

    async def connector(self) -> FakeGateway:
        from ui.source import SourceDisconnected

        if not self.up:
            raise SourceDisconnected("cannot connect to control socket: Connection refused")
        self.connections += 1
        return self

    # -- GatewaySource -------------------------------------------------------------------

    def _check(self) -> None:
        from ui.source import SourceDisconnected

        if not self.up:
            raise SourceDisconnected("control connection lost")

    async def list_conns(self) -> list[dict[str, Any]]:
        self._check()
        return self.conns

    async def list_sas(self) -> list[dict[str, Any]]:
        self._check()
        return self.ike_sas

    async def sa_changes(self, since: dict[str, Any] | None) -> dict[str, Any]:
        """Always the whole table (as the workers' supervisor answers)."""
        from ui.source import SourceRefused

        self._check()
        if not self.incremental:
            raise SourceRefused("bad-request", "list-sas: unknown argument(s): since")
        self.cursors.append(since)
        version = len(self.cursors)
        return {
            "epoch": "fake",
            "version": version,
            "full": True,
            "sas": self.ike_sas,
            "removed": [],
            "counters": [],
        }

    async def stats(self) -> dict[str, Any]:
        from ui.source import SourceRefused

        self._check()
        if self.refuse_stats:
            raise SourceRefused("bad-reply", "unexpected reply from the gateway")
        children = sum(len(s["children"]) for s in self.ike_sas)
        states: dict[str, int] = {}
        for s in self.ike_sas:
            states[s["state"]] = states.get(s["state"], 0) + 1
        base = {
            "uptime": 3725,
            "version": "0.1.0",
            "ike_sas": states,
            "child_sas": children,
            "bytes_in": sum(c["bytes_in"] for s in self.ike_sas for c in s["children"]),
            "bytes_out": sum(c["bytes_out"] for s in self.ike_sas for c in s["children"]),
            "packets_in": 0,
            "packets_out": 0,
            "xdp": [
                {"interface": "eth0", "action": "drop", "reason": "esp_unknown_spi", "packets": 7},
                {"interface": "eth0", "action": "drop", "reason": "ike_rate_limited", "packets": 2},
                {"interface": "eth0", "action": "pass", "reason": "esp", "packets": 99},
                {"interface": "eth0", "action": "redirect", "reason": "esp", "packets": 40},
            ],
            "xdp_steered": {"1": 40},
            "xdp_slots": {"used": 6, "capacity": 65536, "exhausted": 0},
            "xfrm_errors": {"XfrmInNoStates": 2},
            "handshakes": 12,
            "auth_failures": 1,
            "dpd_failures": 0,
            "rekeys": 3,
        }
        return base | self.extra_stats

    def _find(self, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        from ui.source import SourceRefused

        conn, _, child = name.partition(".")
        for ike in self.ike_sas:
            if ike["connection"] != conn:
                continue
            if not child:
                return ike, None
            for c in ike["children"]:
                if c["name"] == child:
                    return ike, c
        raise SourceRefused("unknown-sa", f"no SA named {name}")

    async def initiate(self, name: str) -> Any:
        from ui.source import SourceRefused

        self._check()
        self.calls.append(("initiate", name))
        conn, _, child = name.partition(".")
        if conn not in {c["name"] for c in self.conns}:
            raise SourceRefused("unknown-connection", f"no connection named {conn}")
        self._next += 1
        self.ike_sas.append(
            ike_sa(conn, self._next, [child_sa(child or "net", self._next)], now=self.now)
        )
        return {"initiated": name}

    async def terminate(self, name: str) -> Any:
        self._check()
        self.calls.append(("terminate", name))
        ike, child = self._find(name)
        if child is None:
            self.ike_sas.remove(ike)
        else:
            ike["children"].remove(child)
        return None

    async def rekey(self, name: str) -> Any:
        self._check()
        self.calls.append(("rekey", name))
        ike, child = self._find(name)
        if child is not None:
            self._next += 1
            child["spi_in"], child["spi_out"] = f"e{self._next:07x}", f"f{self._next:07x}"
            child["bytes_in"] = child["bytes_out"] = 0
        return None

    async def reload(self) -> Any:
        self._check()
        self.calls.append(("reload", None))
        return None

    async def subscribe(self) -> Any:
        import asyncio

        self._check()
        self.events = asyncio.Queue()
        queue = self.events

        async def events() -> Any:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event

        return events()

    async def close(self) -> None:
        if self.events is not None:
            self.events.put_nowait(None)
