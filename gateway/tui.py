"""`gateway tui`: the Textual console, connected to the daemon's control socket."""

from __future__ import annotations

import argparse
import os

from gateway.config import DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET
from gateway.errors import CommandError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "tui", help="live console: SAs, rates, events, actions (over the control socket)",
        description="Interactive console of a running gateway. Press ? inside for help.",
    )
    p.add_argument("--socket", default=os.environ.get("GATEWAY_CONTROL_SOCKET", DEFAULT_SOCKET),
                   help="control socket of the daemon (default: %(default)s)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0.05 <= args.interval <= 3600:
        raise CommandError(f"--interval {args.interval:g} is out of range (0.05 to 3600 s)")
    from ui.app import GatewayApp
    from ui.control_source import socket_connector

    app = GatewayApp(socket_connector(args.socket), label=args.socket, interval=args.interval)
    app.run()
    return 0
