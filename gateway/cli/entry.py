"""The `gateway` command. Each subcommand lives in its own module exposing

    register(subparsers) -> None

which adds an argparse sub-parser whose `func` default takes the parsed namespace and
returns an exit status. Adding a subcommand is one line in COMMANDS.

Only the module of the command being run is imported: `gateway ctl` is run by scripts,
tests and the lab many times a second, and must not pay for the daemon's, the engine's or
the console's imports (under the VM's CPU emulation that is tens of seconds per call).
`gateway --help` and unknown commands import them all to list every choice.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import GatewayError

# command name -> module that registers it (the order is the order of `--help`)
COMMANDS: dict[str, str] = {
    "doctor": "gateway.cli.doctor",
    "lab": "gateway.lab.cli",
    "check-config": "gateway.cli.check_config",
    "ctl": "gateway.cli.ctl",
    "run": "gateway.cli.run",
    "tui": "gateway.cli.tui",
    "decode": "gateway.cli.decode",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (only=NAME) one with just that command's sub-parser."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="IKEv2/IPsec gateway with an XFRM data plane and XDP/eBPF acceleration",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [COMMANDS[only]] if only is not None else list(COMMANDS.values())
    for module in modules:
        importlib.import_module(module).register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The known command named by argv's first word, if it is one."""
    if argv and argv[0] in COMMANDS:
        return argv[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(words))
    args = parser.parse_args(words)
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
