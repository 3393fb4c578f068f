"""`gateway tui`: the Textual console, connected to the daemon's control socket."""

from __future__ import annotations

import argparse
import os

from gateway.control.protocol import DEFAULT_CONTROL_SOCKET
from gateway.errors import CommandError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "tui",
        help="live console: SAs, rates, events, actions (over the control socket)",
        description="Interactive console of a running gateway. Press ? inside for help.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        help="control socket of the daemon (default: "
        f"$GATEWAY_CONTROL_SOCKET or {DEFAULT_CONTROL_SOCKET})",
    )
    where.add_argument(
        "-c",
        "--config",
        help="take the control socket from this configuration file ([gateway] control_socket)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (default: %(default)s)"
    )
    p.set_defaults(func=run)


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from gateway.config.reader import load_config

        return load_config(args.config).gateway.control_socket
    return os.environ.get("GATEWAY_CONTROL_SOCKET") or DEFAULT_CONTROL_SOCKET


def run(args: argparse.Namespace) -> int:
    if not 0.05 <= args.interval <= 3600:
        raise CommandError(f"--interval {args.interval:g} is out of range (0.05 to 3600 s)")
    path = socket_path(args)
    from ui.app import GatewayApp, tune_gc
    from ui.control_source import socket_connector

    app = GatewayApp(socket_connector(path), label=path, interval=args.interval)
    tune_gc()
    app.run()
    return 0
