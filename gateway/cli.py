"""The `gateway` command. Each subcommand lives in its own module exposing

    register(subparsers) -> None

which adds an argparse sub-parser whose `func` default takes the parsed namespace and
returns an exit status. Adding a subcommand is one line in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import GatewayError

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.doctor",
    "gateway.lab.cli",
    "gateway.check_config",
    "gateway.ctl",
    "gateway.daemon",
    "gateway.tui",
    "gateway.decode",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="IKEv2/IPsec gateway with an XFRM data plane and XDP/eBPF acceleration",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GatewayError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
