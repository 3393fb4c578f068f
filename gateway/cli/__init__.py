"""The `gateway` command and its subcommands, one module each (docs: README, daemon.md).

    entry.py         the entry point: argparse, one line per error, exit status
    run.py           `gateway run`: the daemon (or the workers' supervisor)
    logs.py          the log set-up `run` and each worker share
    check_config.py  `gateway check-config`
    ctl.py           `gateway ctl`: a client of the control API
    tui.py           `gateway tui`: the Textual console (ui/)
    decode.py        `gateway decode`: an IKEv2 message, payload by payload
    doctor.py        `gateway doctor`: what this machine can do (gateway/probe.py)

`gateway lab` is gateway/lab/cli.py.
"""

from gateway.cli.entry import main

__all__ = ["main"]
