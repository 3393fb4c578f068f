"""The failover lab (`gateway lab up --failover [--ecmp]`, docs/lab.md): routing-driven
failover between two route-based tunnels, with FRR (BGP + BFD) on all three gateways.

    west ── gw-west ══ ipsec-pri (if_id 1, 169.254.10.1/30) ══ east-primary ──┐
   10.1.0.10  │                                                 10.2.0.2        ├─ east
              └═══════ ipsec-bak (if_id 2, 169.254.20.1/30) ══ east-backup  ──┘  10.2.0.10
                                                                10.2.0.3

Each gateway runs our daemon with route-based children (0.0.0.0/0 selectors, an XFRM
interface each: gateway/lab/configs/failover-*.toml) and FRR with the configurations of
docs/routing.md (gateway/lab/configs/frr-*.conf): eBGP with BFD (100 ms x 3) over each
tunnel, the east LAN announced by both east gateways, east-backup with a longer AS path
(`ecmp`: without it, both equal: one route with two next hops), iBGP between the east
gateways over the east LAN so the east host's return traffic finds the tunnel that is up.

`FailoverLab` is the namespace lab (gateway/lab/local.py) in that shape, plus what a test
or benchmark does to it: `kill_primary()` (SIGKILL of east-primary's daemon and its WAN
link down, as the issue asks) and `restore_primary()` (link up, daemon started again:
its start-up clean-up removes the dead daemon's SAs, gw-west's DPD restart brings the
tunnel back, BGP follows), and `next_hops()` (gw-west's kernel route to the east LAN).
Every wait has a deadline scaled to the machine's measured speed (gateway/lab/pace.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.control.protocol import ControlConnectionError, ControlError
from gateway.lab import checks
from gateway.lab.frr import Frr, FrrError
from gateway.lab.local import Lab, LabError, config_text, control_socket
from gateway.lab.pace import Deadline, Pace
from gateway.lab.topology import (
    BACKUP_TUNNEL,
    EAST_HOST,
    EAST_LAN,
    PRIMARY_TUNNEL,
    ROUTER_EAST,
    WEST_TUNNELS,
)
from gateway.netns import Netns

EAST_GATEWAYS = ("east-primary", "east-backup")
GATEWAY_NODES = ("gw-west", *EAST_GATEWAYS)
FRR_DAEMONS = {
    # staticd: the blackholes (east LAN fallback, the tunnel addresses' covering routes)
    "gw-west": ("zebra", "bgpd", "bfdd", "staticd"),
    "east-primary": ("zebra", "bgpd", "bfdd", "staticd"),
    "east-backup": ("zebra", "bgpd", "bfdd", "staticd"),
}
# the BGP sessions each gateway must see Established (and BFD up on the eBGP ones)
BGP_PEERS = {
    "gw-west": (PRIMARY_TUNNEL, BACKUP_TUNNEL),
    "east-primary": (WEST_TUNNELS["primary"], "10.2.0.3"),
    "east-backup": (WEST_TUNNELS["backup"], "10.2.0.2"),
}
PREPEND = " set as-path prepend 65002 65002\n"

# Budgets in reference seconds (gateway/lab/pace.py), as the lab's: four times the worst
# measured in the lab VM (three daemons starting side by side take the longest).
BUDGETS = {
    "namespaces": 6.0,
    "gateways": 12.0,
    "frr": 6.0,
    "tunnels": 6.0,
    "bgp": 10.0,
    "traffic": 3.0,
    "restore": 12.0,
}


def frr_config(node: str, ecmp: bool = False) -> str:
    """The FRR configuration of `node` (docs/routing.md); `ecmp`: east-backup announces
    the east LAN as east-primary does (active/active)."""
    text = config_text(f"frr-{node}.conf")
    if ecmp and node == "east-backup":
        if PREPEND not in text:
            raise LabError("frr-east-backup.conf has no as-path prepend to take out")
        text = text.replace(PREPEND, "")
    return text


def east_lan_next_hops(ns: Netns, prefix: str = EAST_LAN) -> set[str]:
    """Next hops of the kernel's route to `prefix` in `ns`: {} without a usable one (a
    blackhole route counts as none)."""
    routes = json.loads(ns.ip("-j", "route", "show", prefix).stdout or "[]")
    hops: set[str] = set()
    for r in routes:
        if r.get("type") in ("blackhole", "unreachable", "prohibit"):
            continue
        if "gateway" in r:
            hops.add(r["gateway"])
        hops.update(nh["gateway"] for nh in r.get("nexthops", []) if "gateway" in nh)
    return hops


class FailoverLab(Lab):
    """The lab with two tunnels and FRR; a test or benchmark drives its failures."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frr: dict[str, Frr] = {}

    # ------------------------------------------------------------------ up

    def _up(self, state: dict[str, Any], pace: Pace) -> None:
        names = ", ".join(self.topo.names())
        with pace.step("namespaces", f"building namespaces {names}", BUDGETS["namespaces"]):
            self.topo.create()
        text = "starting gw-west, east-primary and east-backup (side by side)"
        with pace.step("gateways", text, BUDGETS["gateways"]) as d:
            for node in (*EAST_GATEWAYS, "gw-west"):  # the responders first
                state["pids"][node] = self._start_gateway(node)
            self.save_state(state)
            for node in GATEWAY_NODES:
                self._wait_daemon(node, state, d)
        with pace.step(
            "frr", "starting FRR (zebra, bgpd, bfdd) on the gateways", BUDGETS["frr"]
        ) as d:
            self._start_frr(state, d)
        with pace.step("tunnels", "waiting for both tunnels", BUDGETS["tunnels"]) as d:
            self._wait_tunnels(state, d)
        text = "waiting for BGP and BFD over the tunnels, the east LAN via east-primary"
        with pace.step("bgp", text, BUDGETS["bgp"]) as d:
            self.wait_routes(self.expected_hops(), d)
        text = "sending traffic west -> east through the primary tunnel"
        with pace.step("traffic", text, BUDGETS["traffic"]) as d:
            west_ns = self.topo.ns("west")
            checks.ping_through(
                lambda argv, timeout: west_ns.run(*argv, check=False, timeout=timeout),
                EAST_HOST,
                d,
            )
            if self.opts.traffic:
                self._start_traffic(state, d)
            self.save_state(state)

    def expected_hops(self) -> set[str]:
        """Where gw-west's route to the east LAN points with both tunnels up."""
        return {PRIMARY_TUNNEL, BACKUP_TUNNEL} if self.opts.ecmp else {PRIMARY_TUNNEL}

    def _start_frr(self, state: dict[str, Any], deadline: Deadline) -> None:
        for node in GATEWAY_NODES:
            frr = Frr(self.topo.ns(node), daemons=FRR_DAEMONS[node])
            self.frr[node] = frr
            state.setdefault("frr_dirs", []).append(str(frr.dir))
            self.save_state(state)
            try:
                frr.start(frr_config(node, self.opts.ecmp), timeout=deadline.remaining())
            except FrrError as exc:
                raise deadline.fail(f"FRR on {node} did not start", str(exc)) from None
            for daemon, proc in frr.procs.items():
                state["pids"][f"frr-{node}-{daemon}"] = proc.pid
            self.save_state(state)

    def _wait_tunnels(self, state: dict[str, Any], deadline: Deadline) -> None:
        def both() -> bool:
            sas = checks.list_sas(control_socket(self.opts))
            up = {sa["connection"] for sa in sas if checks.established([sa])}
            return up >= {"primary", "backup"}

        self._poll(deadline, "both tunnels on gw-west", both, state)

    def wait_routes(
        self, hops: set[str], deadline: Deadline, state: dict[str, Any] | None = None
    ) -> float:
        """Until gw-west's route to the east LAN has exactly `hops`; seconds it took."""
        started = time.monotonic()
        west = self.topo.ns("gw-west")
        self._poll(
            deadline,
            f"gw-west's route to {EAST_LAN} via {', '.join(sorted(hops)) or 'nothing'}",
            lambda: east_lan_next_hops(west) == hops,
            state or self.load_state() or {"pids": {}},
            interval=0.05,
        )
        return time.monotonic() - started

    def _poll(
        self,
        deadline: Deadline,
        what: str,
        probe: Callable[[], bool],
        state: dict[str, Any],
        interval: float = 0.2,
    ) -> None:
        while True:
            gone = self._gone(state)()
            if gone:
                raise deadline.fail(f"{gone} while waiting for {what}", self.failover_logs())
            try:
                if probe():
                    return
            except (OSError, ValueError, ControlConnectionError, ControlError) as exc:
                last = str(exc)
            else:
                last = "not yet"
            if deadline.expired():
                raise deadline.fail(f"gave up waiting for {what} ({last})", self.failover_logs())
            time.sleep(interval)

    def failover_logs(self) -> str:
        parts = [self.logs(*GATEWAY_NODES, lines=20)]
        for node, frr in self.frr.items():
            try:
                parts.append(f"--- FRR on {node}: BGP {frr.bgp_states()} BFD {frr.bfd_states()}")
            except (FrrError, OSError, ValueError):
                parts.append(f"--- FRR on {node}: not answering")
        return "\n".join(parts)

    # ------------------------------------------------------------------ failures

    def kill_primary(self) -> None:
        """east-primary dies: SIGKILL of its daemon (its SAs stay in the kernel, nobody
        answers IKE) and its WAN link down. FRR on it keeps running (its LAN side)."""
        state = self.load_state()
        if state is None or "east-primary" not in state["pids"]:
            raise LabError("no failover lab is up")
        pid = int(state["pids"].pop("east-primary"))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.save_state(state)
        self.topo.ns("east-primary").ip("link", "set", "wan0", "down")

    def restore_primary(self, deadline: Deadline) -> None:
        """east-primary comes back: WAN link up, its daemon started again (until its
        control socket answers); gw-west's DPD restart then brings the tunnel up."""
        state = self.load_state()
        if state is None:
            raise LabError("no failover lab is up")
        pri = self.topo.ns("east-primary")
        pri.ip("link", "set", "wan0", "up")
        pri.ip("route", "replace", "default", "via", ROUTER_EAST)
        control_socket(self.opts, "east-primary").unlink(missing_ok=True)
        state["pids"]["east-primary"] = self._start_gateway("east-primary")
        self.save_state(state)
        self._wait_daemon("east-primary", state, deadline)

    def fail(self) -> str:
        """`gateway lab fail`: east-primary dies (kill_primary)."""
        self.kill_primary()
        return (
            "east-primary: daemon killed (SIGKILL), WAN link down; gw-west's BFD moves the "
            "east LAN to east-backup"
        )

    def restore(self, pace: Pace) -> str:
        """`gateway lab restore`: east-primary back, and the route back on it."""
        with pace.step("restore", "restarting east-primary", BUDGETS["restore"]) as d:
            self.restore_primary(d)
        with pace.step("bgp", "waiting for the east LAN via east-primary", BUDGETS["bgp"]) as d:
            took = self.wait_routes(self.expected_hops(), d)
        return f"east-primary: back; gw-west routes the east LAN through it again ({took:.1f} s)"

    # ------------------------------------------------------------------ status / down

    def status(self) -> dict[str, Any]:
        result = super().status()
        if not result.get("up"):
            return result
        result["failover"] = True
        result["ecmp"] = self.opts.ecmp
        try:
            result["east_lan_via"] = sorted(east_lan_next_hops(self.topo.ns("gw-west")))
        except (OSError, ValueError) as exc:
            result["east_lan_via"] = f"unknown: {exc}"
        state = self.load_state() or {}
        bgp: dict[str, Any] = {}
        for node, directory in zip(GATEWAY_NODES, state.get("frr_dirs", []), strict=False):
            frr = self.frr.get(node) or Frr.existing(self.topo.ns(node), Path(directory))
            try:
                bgp[node] = {"bgp": frr.bgp_states(), "bfd": frr.bfd_states()}
            except (FrrError, OSError, ValueError) as exc:
                bgp[node] = {"error": str(exc)}
        result["routing"] = bgp
        return result

    def down(self, quiet: bool = False) -> list[str]:
        state = self.load_state() or {}
        done = super().down(quiet)  # ends every pid (FRR's too) and the namespaces
        for directory in state.get("frr_dirs", []):
            shutil.rmtree(directory, ignore_errors=True)
        for frr in self.frr.values():
            frr.close()
        self.frr.clear()
        return done
