"""`gateway run -c FILE`: the daemon in the foreground (docs/daemon.md).

Reads and checks the configuration, sets up logging, then runs one `Daemon`
(gateway/daemon/) or, with `[gateway] workers` > 1, the workers' supervisor
(gateway/workers/) with its zygote forked before the event loop starts. SIGTERM/SIGINT
stop it gracefully; SIGHUP reloads the file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from gateway.cli.logs import setup_logging
from gateway.config.engine import check_engine_config
from gateway.config.reader import load_config
from gateway.config.schema import TRAP_NEEDS_KERNEL, GatewayConfig, trap_actions
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.workers.zygote import WorkerMain, WorkerRequest

log = logging.getLogger("gateway.daemon")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_engine_config(config)
    if args.dataplane:
        config = GatewayConfig(
            _replace_dataplane(config, args.dataplane), config.connections, config.source
        )
        if args.dataplane == "none":
            for conn, child, key in trap_actions(config.connections):
                raise GatewayError(
                    f"--dataplane none: connections.{conn.name}.children.{child.name}."
                    f"{key}: {TRAP_NEEDS_KERNEL}"
                )
    setup_logging(args.log_level or config.gateway.log_level)
    if config.gateway.workers > 1:  # N worker processes under a supervisor
        from gateway.workers.supervisor import Supervisor, SupervisorOptions
        from gateway.workers.zygote import start_zygote

        options = SupervisorOptions(os.path.abspath(args.config), args.dataplane, args.log_level)
        zygote = start_zygote(_worker_main)  # before the event loop: it forks the workers
        try:
            return asyncio.run(Supervisor(config, options, zygote).run())
        except GatewayError as exc:
            log.error("event=daemon-failed error=%s", exc)
            raise
        finally:
            zygote.close()
    try:
        asyncio.run(_main(config, os.path.abspath(args.config)))
    except GatewayError as exc:
        log.error("event=daemon-failed error=%s", exc)
        raise
    return 0


def _replace_dataplane(config: GatewayConfig, kind: str) -> Any:
    return dataclasses.replace(config.gateway, dataplane=kind)


async def _main(config: GatewayConfig, path: str) -> None:
    from gateway.daemon.core import Daemon

    daemon = Daemon(config, config_path=path)
    await daemon.run()


def _worker_main() -> WorkerMain:
    """What the zygote imports once and each forked worker runs: the worker's life
    (gateway/workers/worker.py) with the daemon's logging, its lines marked worker=K."""
    from gateway.workers.worker import run_worker

    def worker(request: WorkerRequest, fds: list[int]) -> int:
        setup_logging(request.log_level, suffix=f" worker={request.index}")
        return run_worker(request, fds)

    return worker


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the gateway daemon in the foreground",
        description="Run the IKE daemon until SIGTERM/SIGINT; SIGHUP reloads the config.",
    )
    parser.add_argument("-c", "--config", required=True, help="configuration file (TOML)")
    parser.add_argument(
        "--dataplane", choices=("xfrm", "none"), help="override [gateway] dataplane"
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="override log_level"
    )
    parser.set_defaults(func=run)
