"""`gateway check-config FILE`: validate a configuration without starting anything.

Prints a one-line summary per connection when the file is good (exit 0), or every
problem with its key path and line (exit 1). `--json` prints the same as one object.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.config.reader import ConfigError, load_config
from gateway.config.schema import GatewayConfig


def summary(config: GatewayConfig) -> dict[str, object]:
    """What was understood, without secrets: enough to see the file means what you meant."""
    g = config.gateway
    return {
        "listen": list(g.listen),
        "control_socket": g.control_socket,
        "metrics_listen": f"{g.metrics_listen[0]}:{g.metrics_listen[1]}"
        if g.metrics_listen
        else None,
        "dataplane": g.dataplane,
        "connections": [
            {
                "name": c.name,
                "local_addrs": list(c.local_addrs),
                "remote_addrs": list(c.remote_addrs),
                "auth": [c.local.auth, c.remote.auth],
                "ike_proposals": list(c.ike_proposals),
                "children": [
                    {
                        "name": ch.name,
                        "local_ts": list(ch.local_ts),
                        "remote_ts": list(ch.remote_ts),
                        "mode": ch.mode,
                        "start_action": ch.start_action,
                    }
                    for ch in c.children
                ],
            }
            for c in config.connections
        ],
    }


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        if args.json:
            issues = [{"path": i.path, "line": i.line, "message": i.message} for i in exc.issues]
            print(json.dumps({"ok": False, "file": exc.source, "errors": issues}, indent=2))
        else:
            print(f"gateway check-config: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, "file": args.file, **summary(config)}, indent=2))
        return 0
    children = sum(len(c.children) for c in config.connections)
    print(
        f"{args.file}: OK, {len(config.connections)} connection(s), {children} child SA(s), "
        f"dataplane {config.gateway.dataplane}"
    )
    for c in config.connections:
        peers = ",".join(c.remote_addrs)
        kids = ", ".join(
            f"{ch.name} {','.join(ch.local_ts)} === {','.join(ch.remote_ts)} ({ch.mode})"
            for ch in c.children
        )
        print(
            f"  {c.name}: {','.join(c.local_addrs)}...{peers} {c.local.auth}/{c.remote.auth}"
            f"{'  ' + kids if kids else ''}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Check a gateway TOML configuration and report every error.",
    )
    parser.add_argument("file", help="configuration file (TOML)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
