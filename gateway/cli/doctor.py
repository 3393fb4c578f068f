"""`gateway doctor`: what this machine can do for the gateway, with a fix for each gap."""

from __future__ import annotations

import argparse
import json

from gateway import probe

_MARK = {"ok": "ok", "missing": "MISSING", "warn": "warn", "info": "info"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="check kernel ESP, AES-NI, bcc, XDP and ESP offload on this machine",
        description="Check what this machine can do for the gateway and how to fix gaps. "
        "Exit status 1 when a required capability is missing.",
    )
    p.add_argument(
        "-i",
        "--interface",
        action="append",
        default=[],
        metavar="IF",
        help="also check native XDP and ESP offload of this interface (repeatable): "
        "the `offload` modes it supports",
    )
    p.add_argument(
        "--offload-trial",
        action="store_true",
        help="with -i: also ask the kernel for crypto and packet offload of a throw-away "
        "SA on each interface (installed and removed in this network namespace at once)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the bcc compile test")
    p.add_argument("--json", action="store_true", help="print the checks as a JSON array")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = probe.run_all(
        args.interface, compile_bpf=not args.no_compile, offload_trial=args.offload_trial
    )
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.name:<{width}}  {_MARK[c.status]:<7}  {c.detail}")
            if c.fix and c.status != "ok":
                print(f"{'':<{width}}  {'':<7}  fix: {c.fix}")
    return 1 if any(c.status == "missing" for c in checks) else 0
