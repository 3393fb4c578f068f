"""`gateway lab up|down|status|tui`: the lab topology, in namespaces or in a VM."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway import probe
from gateway.lab.local import DEFAULT_DIR, Lab, LabError, LabOptions
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
        "--nat",
        action="store_true",
        help="put gw-west behind a masquerading router (tunnel moves to UDP 4500)",
    )
    up.add_argument(
        "--no-tui",
        action="store_true",
        help="return once the tunnel is up and traffic passed (for scripts)",
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

    tui = lab_sub.add_parser("tui", help="open the console on gw-west")
    tui.set_defaults(func=cmd_tui)

    agent = lab_sub.add_parser("agent")  # internal: runs inside the lab VM
    agent.add_argument("--shared", required=True, type=Path)
    agent.add_argument("--peer", default="gateway")
    agent.add_argument("--nat", action="store_true")
    agent.add_argument("--no-xdp", action="store_true")
    agent.add_argument("--no-traffic", action="store_true")
    agent.set_defaults(func=cmd_agent)


def _opts(args: argparse.Namespace) -> LabOptions:
    return LabOptions(
        peer=getattr(args, "peer", "gateway"),
        nat=getattr(args, "nat", False),
        xdp=not getattr(args, "no_xdp", False),
        traffic=not getattr(args, "no_traffic", False),
    )


def _current(opts: LabOptions) -> Lab | VmLab | None:
    try:
        state = json.loads((opts.directory / "state.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read the lab state in {opts.directory}: {exc}") from None
    return VmLab(opts) if state.get("mode") == "vm" else Lab(opts)


def _progress(line: str) -> None:
    print(line, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    opts = _opts(args)
    current = _current(opts)
    if current is not None and not args.no_tui and sys.stdin.isatty():
        _progress("lab: already up; opening its console")
        return run_tui_then_offer_down(current)
    if current is not None:
        raise LabError(
            "a lab is already up: `gateway lab status` shows it, `gateway lab down` removes it"
        )
    use_vm = args.vm
    if not args.vm and not args.no_vm:
        esp = probe.kernel_esp()
        use_vm = not esp.ok
        if use_vm:
            _progress(
                "lab: this kernel has no ESP, so the lab runs inside a virtme-ng VM "
                "with Debian's kernel (it keeps running until `gateway lab down`)"
            )
    lab: Lab | VmLab = VmLab(opts) if use_vm else Lab(opts)
    try:
        status = lab.up(progress=_progress)
    except (OSError, subprocess.SubprocessError) as exc:
        # up() has already removed what it built
        raise LabError(f"the lab could not be brought up: {exc}") from None
    print_status(status)
    _progress(
        "lab: up. `gateway lab status` shows it, `gateway lab tui` opens the console, "
        "`gateway lab down` removes it."
    )
    if args.no_tui:
        return 0
    return run_tui_then_offer_down(lab)


def run_tui_then_offer_down(lab: Lab | VmLab) -> int:
    _run_tui(lab)
    if not sys.stdin.isatty():
        return 0
    answer = input("Tear the lab down now? [Y/n] ").strip().lower()
    if answer in ("", "y", "yes"):
        for line in lab.down():
            _progress(f"lab: {line}")
    else:
        _progress("lab: left running; `gateway lab down` removes it")
    return 0


def _run_tui(lab: Lab | VmLab) -> None:
    from ui.app import GatewayApp
    from ui.control_source import socket_connector

    if isinstance(lab, VmLab):
        connector, label = lab.connector(), "lab gw-west (in VM)"
    else:
        from gateway.lab.local import control_socket

        sock = control_socket(lab.opts)
        connector, label = socket_connector(sock), f"lab gw-west ({sock})"
    GatewayApp(connector, label=label, interval=1.0).run()


def cmd_status(args: argparse.Namespace) -> int:
    lab = _current(_opts(args))
    status = lab.status() if lab else {"up": False}
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status)
    return 0 if status.get("up") else 1


def cmd_down(args: argparse.Namespace) -> int:
    opts = _opts(args)
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
    lab = _current(_opts(args))
    if lab is None:
        raise LabError("no lab is up: `gateway lab up` first")
    _run_tui(lab)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    return run_agent(args.shared, _opts(args))


def print_status(status: dict[str, Any]) -> None:
    if not status.get("up"):
        print("lab: down")
        return
    where = "in a VM" if status.get("mode") == "vm" else "in network namespaces"
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
    if status.get("error"):
        print(f"  error: {status['error']}")


__all__ = ["register", "DEFAULT_DIR"]
