"""`gateway ctl`: talk to a running gateway over its control socket.

    gateway ctl [--socket PATH] list-conns|list-sas|stats [--json]
    gateway ctl [--socket PATH] initiate|terminate|rekey NAME [--timeout S] [--json]
    gateway ctl [--socket PATH] migrate NAME [--local ADDR] [--remote ADDR] [--timeout S]
    gateway ctl [--socket PATH] redirect NAME --to GW [--timeout S] [--json]
    gateway ctl [--socket PATH] reload [--json]
    gateway ctl [--socket PATH] events [--count N] [--json]

Human-readable output by default, shaped like `swanctl --list-sas`; `--json` prints the
control API's result as it is (events: one JSON object per line). Exit status 0 on
success; 1 with the server's message when it refused the request; 2 when the socket
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.control.client import ControlClient
from gateway.control.protocol import DEFAULT_CONTROL_SOCKET, ControlError

SOCKET_ENV = "GATEWAY_CONTROL_SOCKET"


# --------------------------------------------------------------------------- formatting


def _ago(now: float, then: float | None) -> str:
    return f"{_span(now - then)} ago" if then else "-"


def _until(now: float, then: float | None) -> str:
    return f"in {_span(then - now)}" if then else "never"


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _join(items: Any) -> str:
    return ", ".join(str(i) for i in items or []) or "-"


def format_sas(sas: list[dict[str, Any]], now: float | None = None) -> str:
    """Like `swanctl --list-sas`: one block per IKE SA, Child SAs indented below."""
    now = time.time() if now is None else now
    if not sas:
        return "no IKE SAs"
    out: list[str] = []
    for sa in sas:
        out.append(
            f"{sa.get('connection')}: {sa.get('state')}, IKEv2, "
            f"{sa.get('spi_i')}_i {sa.get('spi_r')}_r"
        )
        out.append(f"  local  '{sa.get('local_id')}' @ {sa.get('local_addr')}")
        out.append(f"  remote '{sa.get('remote_id')}' @ {sa.get('remote_addr')}")
        if sa.get("ike_proposal"):
            out.append(f"  {sa['ike_proposal']}")
        if sa.get("established_at"):
            out.append(
                f"  established {_ago(now, sa['established_at'])}, "
                f"rekeying {_until(now, sa.get('rekey_at'))}"
            )
        for child in sa.get("children") or []:
            encap = "-in-UDP" if child.get("encap") else ""
            offload = child.get("offload") or "none"
            out.append(
                f"  {child.get('name')}: {child.get('state')}, {str(child.get('mode')).upper()}, "
                f"ESP{encap}:{child.get('esp_proposal')}, offload {offload}"
            )
            if child.get("installed_at"):
                out.append(
                    f"    installed {_ago(now, child['installed_at'])}, "
                    f"rekeying {_until(now, child.get('rekey_at'))}, "
                    f"expires {_until(now, child.get('expire_at'))}"
                )
            for direction in ("in", "out"):
                out.append(
                    f"    {direction:<3} {child.get('spi_' + direction)}, "
                    f"{child.get('bytes_' + direction, 0):>12} bytes, "
                    f"{child.get('packets_' + direction, 0):>9} packets"
                )
            out.append(f"    local  {_join(child.get('local_ts'))}")
            out.append(f"    remote {_join(child.get('remote_ts'))}")
    return "\n".join(out)


def format_conns(conns: list[dict[str, Any]]) -> str:
    """Like `swanctl --list-conns`."""
    if not conns:
        return "no connections"
    out: list[str] = []
    for c in conns:
        out.append(f"{c.get('name')}: IKEv2, {_join(c.get('ike_proposals'))}")
        out.append(f"  local:  {_join(c.get('local_addrs'))}  id {c.get('local_id') or '%any'}")
        out.append(f"  remote: {_join(c.get('remote_addrs'))}  id {c.get('remote_id') or '%any'}")
        for child in c.get("children") or []:
            trap = child.get("trap")
            trapped = f", trap {trap.get('state')}" if isinstance(trap, dict) else ""
            out.append(
                f"  {child.get('name')}: {str(child.get('mode')).upper()}, "
                f"{_join(child.get('esp_proposals'))}, start_action {child.get('start_action')}"
                f"{trapped}"
            )
            out.append(f"    local:  {_join(child.get('local_ts'))}")
            out.append(f"    remote: {_join(child.get('remote_ts'))}")
    return "\n".join(out)


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"gateway {stats.get('version')}, up {_span(float(stats.get('uptime', 0)))}",
        "IKE SAs: "
        + (
            ", ".join(f"{n} {state}" for state, n in sorted((stats.get("ike_sas") or {}).items()))
            or "none"
        ),
        f"Child SAs: {stats.get('child_sas', 0)}",
        f"traffic: in {stats.get('bytes_in', 0)} bytes / {stats.get('packets_in', 0)} packets, "
        f"out {stats.get('bytes_out', 0)} bytes / {stats.get('packets_out', 0)} packets",
        f"handshakes {stats.get('handshakes', 0)}, rekeys {stats.get('rekeys', 0)}, "
        f"auth failures {stats.get('auth_failures', 0)}, "
        f"DPD failures {stats.get('dpd_failures', 0)}",
    ]
    for row in stats.get("xdp") or []:
        lines.append(
            f"xdp {row.get('interface')}: {row.get('action')} {row.get('reason')} "
            f"{row.get('packets')} packets"
        )
    errors = {k: v for k, v in (stats.get("xfrm_errors") or {}).items() if v}
    if errors:
        lines.append("xfrm errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


def format_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(event.get("time", 0))))
    rest = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("type", "time") and v is not None
    )
    return f"{stamp} {event.get('type')} {rest}".rstrip()


def format_action(cmd: str, name: str | None, result: Any) -> str:
    if isinstance(result, dict) and result.get("message"):
        return str(result["message"])
    return f"{cmd} {name} done" if name else f"{cmd} done"


# --------------------------------------------------------------------------- commands


async def _run(args: argparse.Namespace) -> int:
    async with await ControlClient.connect(args.socket) as client:
        cmd: str = args.ctl_command
        if cmd == "events":
            return await _follow(client, args)
        call_args: dict[str, Any] | None = None
        if cmd in ("initiate", "terminate", "rekey"):
            call_args = {"name": args.name, "timeout": args.timeout}
        elif cmd == "redirect":
            call_args = {"name": args.name, "to": args.to, "timeout": args.timeout}
        elif cmd == "migrate":
            call_args = {"name": args.name, "timeout": args.timeout}
            if args.local:
                call_args["local_addr"] = args.local
            if args.remote:
                call_args["remote_addr"] = args.remote
        try:
            result = await client.call(cmd, call_args)
        except ControlError as exc:
            print(f"gateway ctl {cmd}: {exc.message} ({exc.code})", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    formatters: dict[str, Callable[[Any], str]] = {
        "list-sas": format_sas,
        "list-conns": format_conns,
        "stats": format_stats,
    }
    formatter = formatters.get(cmd)
    print(
        formatter(result) if formatter else format_action(cmd, getattr(args, "name", None), result)
    )
    return 0


async def _follow(client: ControlClient, args: argparse.Namespace) -> int:
    events = await client.subscribe()
    seen = 0
    async for event in events:
        print(json.dumps(event, sort_keys=True) if args.json else format_event(event), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            return 0
    if args.count:
        print("gateway ctl events: the gateway closed the connection", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ctl",
        help="control a running gateway (list SAs, initiate, terminate, ...)",
        description="Send a command to a running gateway over its control socket.",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV, DEFAULT_CONTROL_SOCKET),
        help=f"control socket (default: ${SOCKET_ENV} or {DEFAULT_CONTROL_SOCKET})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sub = parser.add_subparsers(dest="ctl_command", metavar="CMD")
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        # --json after the command too ("ctl list-sas --json"); SUPPRESS keeps the outer one.
        p.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print JSON (for scripts)",
        )
        return p

    add("list-conns", "list configured connections")
    add("list-sas", "list IKE SAs and their Child SAs")
    add("stats", "gateway-wide counters")
    add("reload", "reload the configuration file (like SIGHUP)")
    for name, text in (
        ("initiate", "establish a connection or one Child SA (NAME or NAME.CHILD)"),
        ("terminate", "delete a connection's IKE SA or one Child SA (NAME or NAME.CHILD)"),
        ("rekey", "rekey a connection's IKE SA or one Child SA (NAME or NAME.CHILD)"),
        ("redirect", "send the peers of a connection's IKE SAs to another gateway (RFC 5685)"),
    ):
        p = add(name, text)
        if name == "redirect":
            p.add_argument(
                "--to", required=True, metavar="GW", help="the new gateway: IP address or FQDN"
            )
        p.add_argument("name", metavar="NAME", help="connection or connection.child")
        p.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="seconds to wait for the outcome (default 30)",
        )
    p = add(
        "migrate",
        "move a connection's IKE SA and its Child SAs to new addresses (MOBIKE); "
        "without --local/--remote to the source a route lookup toward the peer picks",
    )
    p.add_argument("name", metavar="NAME", help="connection")
    p.add_argument("--local", metavar="ADDR", help="our new address")
    p.add_argument("--remote", metavar="ADDR", help="the peer's new address")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the outcome (default 30)"
    )
    p = add("events", "follow the event stream (establish, rekey, delete, errors)")
    p.add_argument("--count", type=int, default=0, help="stop after N events (default: follow)")
    parser.set_defaults(func=run)
