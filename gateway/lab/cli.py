"""`gateway lab up|down|status|tui`: the lab topology, in namespaces or in a VM."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway import probe
from gateway.control.protocol import DEFAULT_CONTROL_SOCKET
from gateway.lab import checks
from gateway.lab.failover import BUDGETS as FAILOVER_BUDGETS
from gateway.lab.failover import FailoverLab
from gateway.lab.local import (
    BUDGETS,
    DEFAULT_DIR,
    Lab,
    LabError,
    LabOptions,
    describe_running,
    lab_lock,
    read_state,
)
from gateway.lab.pace import Pace, describe
from gateway.lab.topology import EAST_HOST, GW_WEST_LAN
from gateway.lab.vmmode import VmLab, run_agent


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "lab",
        help="bring up the lab: two gateways, a WAN (optional NAT), a host behind each",
        description="The lab topology west -- gw-west == wan == gw-east -- east, in network "
        "namespaces (or a virtme-ng VM when this kernel has no ESP). See docs/lab.md.",
    )
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    lab_sub.required = True

    up = lab_sub.add_parser("up", help="build the lab, bring the tunnel up, start traffic")
    up.add_argument(
        "--peer",
        choices=("gateway", "strongswan"),
        default="gateway",
        help="what runs on gw-east (default: our gateway)",
    )
    up.add_argument(
        "--roadwarrior",
        action="store_true",
        help="gw-west serves road warriors; a strongSwan client on gw-east (behind the WAN) "
        "dials it with EAP-MSCHAPv2 and gets a virtual IP (instead of a site-to-site peer)",
    )
    up.add_argument(
        "--nat",
        action="store_true",
        help="put gw-west behind a masquerading router (tunnel moves to UDP 4500)",
    )
    up.add_argument(
        "--no-tui",
        action="store_true",
        help="return once the tunnel is up and traffic passed (for scripts)",
    )
    up.add_argument(
        "--failover",
        action="store_true",
        help="the failover lab: gw-west with two route-based tunnels to east-primary and "
        "east-backup, FRR (BGP + BFD) on all three (docs/lab.md)",
    )
    up.add_argument(
        "--ecmp",
        action="store_true",
        help="with --failover: both east gateways announced equally (active/active)",
    )
    up.add_argument("--no-xdp", action="store_true", help="do not attach XDP on gw-west")
    up.add_argument(
        "--no-traffic",
        action="store_true",
        help="do not leave iperf3/ping running between the hosts",
    )
    where = up.add_mutually_exclusive_group()
    where.add_argument("--vm", action="store_true", help="run inside a VM even if ESP works here")
    where.add_argument("--no-vm", action="store_true", help="never use a VM")
    up.set_defaults(func=cmd_up)

    status = lab_sub.add_parser("status", help="nodes, processes, SAs and counters")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    down = lab_sub.add_parser("down", help="stop everything the lab started and remove it")
    down.set_defaults(func=cmd_down)

    fail = lab_sub.add_parser(
        "fail",
        help="failover lab: kill east-primary (its daemon by SIGKILL, its WAN link down)",
    )
    fail.set_defaults(func=cmd_fail)
    restore = lab_sub.add_parser(
        "restore", help="failover lab: bring east-primary back and wait for the route"
    )
    restore.set_defaults(func=cmd_restore)

    tui = lab_sub.add_parser(
        "tui", help="open the console on gw-west (quitting it offers to tear the lab down)"
    )
    tui.set_defaults(func=cmd_tui)

    check = lab_sub.add_parser(
        "check",
        help="check a gateway of the Vagrant lab (run on it by deploy/provision.sh)",
        description="On a lab gateway: the daemon answers on its control socket; on gw-west "
        "also the tunnel is up, pings from its LAN address cross it and the kernel counted "
        "the ESP packets; Prometheus scrapes the gateway. Every wait scales with the "
        "measured speed of the machine; a failure names the step.",
    )
    check.add_argument("role", choices=("gw-west", "gw-east"))
    check.add_argument(
        "--socket",
        type=Path,
        default=Path(DEFAULT_CONTROL_SOCKET),
        help=f"the daemon's control socket (default {DEFAULT_CONTROL_SOCKET})",
    )
    check.add_argument(
        "--prometheus",
        default="http://127.0.0.1:9090",
        metavar="URL",
        help="the Prometheus server scraping this gateway ('' skips that check)",
    )
    check.set_defaults(func=cmd_check)

    agent = lab_sub.add_parser("agent")  # internal: runs inside the lab VM
    agent.add_argument("--shared", required=True, type=Path)
    agent.add_argument("--peer", default="gateway")
    agent.add_argument("--nat", action="store_true")
    agent.add_argument("--no-xdp", action="store_true")
    agent.add_argument("--no-traffic", action="store_true")
    agent.add_argument("--failover", action="store_true")
    agent.add_argument("--ecmp", action="store_true")
    agent.set_defaults(func=cmd_agent)


def lab_options(args: argparse.Namespace) -> LabOptions:
    peer = getattr(args, "peer", "gateway")
    if getattr(args, "roadwarrior", False):
        if peer != "gateway" or getattr(args, "nat", False) or getattr(args, "failover", False):
            raise LabError(
                "--roadwarrior brings its own peer: not with --peer, --nat or --failover"
            )
        peer = "roadwarrior"
    return LabOptions(
        peer=peer,
        nat=getattr(args, "nat", False),
        xdp=not getattr(args, "no_xdp", False),
        traffic=not getattr(args, "no_traffic", False),
        failover=getattr(args, "failover", False) or getattr(args, "ecmp", False),
        ecmp=getattr(args, "ecmp", False),
    )


def _current(opts: LabOptions) -> Lab | VmLab | None:
    state = read_state(opts.directory / "state.json")
    if state is None:
        return None
    opts = replace(opts, failover=bool(state.get("failover")), ecmp=bool(state.get("ecmp")))
    if state.get("mode") == "vm":
        return VmLab(opts)
    return FailoverLab(opts) if opts.failover else Lab(opts)


class Progress:
    """Prints the progress records of `up` and remembers how long each step took."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.took: list[str] = []

    def __call__(self, record: dict[str, object]) -> None:
        line = describe(record)
        if line:
            print(line, flush=True)
        elapsed = record.get("elapsed")
        if record.get("event") == "done" and isinstance(elapsed, int | float):
            self.took.append(f"{record.get('step')} {elapsed:.0f} s")

    def summary(self) -> str:
        total = time.monotonic() - self.started
        return f"lab: up after {total:.0f} s ({', '.join(self.took)})"


def _stop_on_signal(signum: int, frame: object) -> None:
    # SIGTERM/SIGHUP while bringing the lab up: unwind so `up` removes what it built
    raise SystemExit(128 + signum)


def cmd_up(args: argparse.Namespace) -> int:
    opts = lab_options(args)
    progress = Progress()
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with lab_lock(opts.directory, "up"):
            state = read_state(opts.directory / "state.json")
            if state is not None:
                # never touch a running lab: say what is there and how to reach it
                raise LabError(describe_running(state))
            lab = _choose(args, opts)
            pace = Pace.measured(report=progress)
            try:
                status = lab.up(pace)
            except (OSError, subprocess.SubprocessError) as exc:
                # up() has already removed what it built
                raise LabError(f"the lab could not be brought up: {exc}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_status(status)
    _progress(progress.summary())
    _progress(
        "lab: up. `gateway lab status` shows it, `gateway lab tui` opens the console, "
        "`gateway lab down` removes it."
    )
    if args.no_tui:
        return 0
    return run_tui_then_offer_down(lab, status)


def _choose(args: argparse.Namespace, opts: LabOptions) -> Lab | VmLab:
    use_vm = args.vm
    if not args.vm and not args.no_vm:
        esp = probe.kernel_esp()
        use_vm = not esp.ok
        if use_vm:
            _progress(
                "lab: this kernel has no ESP, so the lab runs inside a virtme-ng VM "
                "with Debian's kernel (it keeps running until `gateway lab down`)"
            )
    if use_vm:
        return VmLab(opts)
    return FailoverLab(opts) if opts.failover else Lab(opts)


def _progress(line: str) -> None:
    print(line, flush=True)


def run_tui_then_offer_down(lab: Lab | VmLab, status: dict[str, Any] | None = None) -> int:
    """The console on gw-west; when it quits, offer to tear the lab down (on a terminal)."""
    _run_tui(lab, status)
    if not sys.stdin.isatty():
        return 0
    try:
        answer = input("Tear the lab down now? [Y/n] ").strip().lower()
    except EOFError:
        answer = "n"
    if answer in ("", "y", "yes"):
        with lab_lock(lab.opts.directory, "down"):
            done = lab.down()
        for line in done:
            _progress(f"lab: {line}")
        _progress("lab: down")
    else:
        _progress(
            "lab: left running; `gateway lab tui` opens the console, `gateway lab down` removes it"
        )
    return 0


def _run_tui(lab: Lab | VmLab, status: dict[str, Any] | None = None) -> None:
    from ui.control_source import socket_connector

    if isinstance(lab, VmLab):
        connector, label = lab.connector(), "lab gw-west (in VM)"
    else:
        from gateway.lab.local import control_socket

        sock = control_socket(lab.opts)
        connector, label = socket_connector(sock), f"lab gw-west ({sock})"
    if status is None:
        try:
            status = lab.status()
        except LabError:
            status = {}
    lab_console(connector, label, list(status.get("events") or [])).run()


def lab_console(connector: Any, label: str, history: list[str]) -> Any:
    """The console (ui.app.GatewayApp) with gw-west's events so far at the top of its
    event log: the control API pushes only events that happen after it subscribed."""
    from ui.app import GatewayApp

    class LabConsole(GatewayApp):
        def on_mount(self) -> None:
            # Textual runs GatewayApp.on_mount (polling, focus) after this one as well
            for line in history:
                self.event_log.write_line(line)

    return LabConsole(connector, label=label, interval=1.0)


def cmd_status(args: argparse.Namespace) -> int:
    lab = _current(lab_options(args))
    status = lab.status() if lab else {"up": False}
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status)
    return 0 if status.get("up") else 1


def cmd_down(args: argparse.Namespace) -> int:
    opts = lab_options(args)
    with lab_lock(opts.directory, "down"):
        lab = _current(opts)
        if lab is None:
            # Nothing recorded: still remove namespaces a crashed run may have left.
            lab = Lab(opts)
        done = lab.down()
    for line in done:
        _progress(f"lab: {line}")
    if not done:
        _progress("lab: nothing to remove")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    lab = _current(lab_options(args))
    if lab is None:
        raise LabError("no lab is up: `gateway lab up` first")
    return run_tui_then_offer_down(lab)


def _failover_lab(args: argparse.Namespace) -> FailoverLab | VmLab:
    lab = _current(lab_options(args))
    if lab is None or not lab.opts.failover:
        raise LabError("no failover lab is up: `gateway lab up --failover` first")
    assert isinstance(lab, FailoverLab | VmLab)
    return lab


def cmd_fail(args: argparse.Namespace) -> int:
    lab = _failover_lab(args)
    if isinstance(lab, VmLab):
        done = lab.request("fail")["done"]
    else:
        done = lab.fail()
    _progress(f"lab: {done}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    lab = _failover_lab(args)
    if isinstance(lab, VmLab):
        budget = FAILOVER_BUDGETS["restore"] + FAILOVER_BUDGETS["bgp"]
        done = lab.request("restore", budget)["done"]
    else:
        done = lab.restore(Pace.measured(report=Progress()))
    _progress(f"lab: {done}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The namespace lab's checks, on one gateway of the Vagrant lab."""
    progress = Progress()
    pace = Pace.measured(report=progress)
    sock: Path = args.socket
    # The daemon may be compiling its XDP/TC programs with bcc first (the slowest start the
    # lab knows); the wait ends as soon as it answers, so the larger budget costs nothing.
    budget = BUDGETS["gw-west-xdp"]
    with pace.step("daemon", f"{args.role}: waiting for the daemon on {sock}", budget) as d:
        checks.wait_daemon(sock, d)
    _progress(f"check: the daemon answers on {sock}")
    if args.role == "gw-west":
        with pace.step("tunnel", "gw-west: waiting for the tunnel", 4.0) as d:
            sa, child = checks.wait_tunnel(sock, d)
        _progress(f"check: tunnel up: {checks.describe(sa, child)}")
        text = f"gw-west: pinging {EAST_HOST} from {GW_WEST_LAN} through the tunnel"
        with pace.step("traffic", text, 3.0) as d:
            checks.ping_through(checks.run_here, EAST_HOST, d, source=GW_WEST_LAN)
            child = checks.esp_counted(sock, d)
        _progress(
            f"check: pings crossed the tunnel; the kernel counted {child.get('packets_out')} "
            f"ESP packets out, {child.get('packets_in')} in"
        )
    if args.prometheus:
        series = "ipsec_child_sa_packets_total" if args.role == "gw-west" else None
        text = f"{args.role}: waiting for Prometheus ({args.prometheus}) to scrape the gateway"
        with pace.step("prometheus", text, 6.0) as d:
            found = checks.prometheus_scrapes(args.prometheus, d, series=series)
            rules = checks.prometheus_rules(args.prometheus, d)
        _progress(f"check: Prometheus scrapes the gateway: {found}")
        _progress(f"check: Prometheus evaluates the {rules} alerting rules of ipsec-alerts.yml")
    _progress(f"check: {args.role} ok")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    return run_agent(args.shared, lab_options(args))


def print_status(status: dict[str, Any]) -> None:
    if not status.get("up"):
        print("lab: down")
        return
    where = "in a VM" if status.get("mode") == "vm" else "in network namespaces"
    if status.get("failover"):
        print(
            f"lab: failover lab up {where}"
            + (" (active/active: ECMP)" if status.get("ecmp") else "")
            + f"; gw-west routes the east LAN via {status.get('east_lan_via')}"
        )
        for node, routing in (status.get("routing") or {}).items():
            print(f"  frr  {node:<12} BGP {routing.get('bgp')} BFD {routing.get('bfd')}")
    else:
        print(
            f"lab: up {where}, gw-east runs {status.get('peer')}"
            + (", gw-west behind NAT" if status.get("nat") else "")
        )
    for node in status.get("nodes", []):
        mark = "ok" if node.get("present") else "MISSING"
        print(f"  node {node['name']:<8} {node['namespace']:<16} {mark}")
    for proc in status.get("processes", []):
        mark = "running" if proc.get("running") else "NOT RUNNING"
        print(f"  proc {proc['name']:<14} pid {proc['pid']:<8} {mark}")
    for sa in status.get("sas", []):
        print(
            f"  ike  {sa.get('connection')}: {sa.get('state')} "
            f"{sa.get('local_addr')} <-> {sa.get('remote_addr')} {sa.get('ike_proposal', '')}"
        )
        for c in sa.get("children", []):
            print(
                f"  esp  {sa.get('connection')}.{c.get('name')}: {c.get('state')} "
                f"in {c.get('spi_in')} out {c.get('spi_out')} "
                f"{'udp-encap ' if c.get('encap') else ''}{c.get('esp_proposal')}  "
                f"{c.get('bytes_in', 0)} B/{c.get('packets_in', 0)} pkts in, "
                f"{c.get('bytes_out', 0)} B/{c.get('packets_out', 0)} pkts out"
            )
    events = status.get("events") or []
    if events:
        print("  recent events on gw-west:")
        for line in events[-8:]:
            print(f"    {line}")
    if status.get("error"):
        print(f"  error: {status['error']}")


__all__ = ["register", "DEFAULT_DIR"]
