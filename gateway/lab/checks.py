"""The lab's checks, shared by the namespace lab (`gateway lab up`) and the Vagrant lab's
provisioning (`gateway lab check`, run by deploy/provision.sh on each gateway VM).

Each check waits against a `Deadline` (gateway/lab/pace.py) and, when it runs out, fails
with the step's name, what it was waiting for, and the log lines the caller supplies.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.control.client import ControlClient
from gateway.control.protocol import ControlConnectionError, ControlError
from gateway.lab.pace import Deadline

Sas = list[dict[str, Any]]
# Returns why the daemon cannot answer any more (it exited), or None while it runs.
Alive = Callable[[], str | None]
Logs = Callable[[], str]


def _running() -> str | None:
    return None


def _no_logs() -> str:
    return ""


def traffic_script() -> Path:
    """gateway/lab/traffic.sh: the lab's traffic and ping check, for both labs."""
    return Path(str(resources.files("gateway.lab").joinpath("traffic.sh")))


def list_sas(socket: Path, timeout: float = 5.0) -> Sas:
    async def ask() -> Sas:
        async with await ControlClient.connect(socket, timeout=timeout) as client:
            result: Sas = await asyncio.wait_for(client.list_sas(), timeout)
            return result

    return asyncio.run(ask())


def established(sas: Sas) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first ESTABLISHED IKE SA with an INSTALLED Child SA, and that Child SA."""
    for sa in sas:
        if sa.get("state") != "ESTABLISHED":
            continue
        for child in sa.get("children", []):
            if child.get("state") == "INSTALLED":
                return sa, child
    return None


def _poll(
    deadline: Deadline,
    what: str,
    probe: Callable[[], Any],
    alive: Alive,
    logs: Logs,
    interval: float = 0.5,
) -> Any:
    """Call `probe` until it returns something true; `what` says what we wait for."""
    last = "no answer yet"
    while True:
        gone = alive()
        if gone:
            raise deadline.fail(f"{gone} while waiting for {what}", logs())
        try:
            found = probe()
        except (ControlConnectionError, ControlError, OSError, TimeoutError) as exc:
            last = str(exc) or type(exc).__name__
        else:
            if found:
                return found
            last = "not yet"
        if deadline.expired():
            raise deadline.fail(f"gave up waiting for {what} ({last})", logs())
        time.sleep(interval)


def wait_daemon(
    socket: Path, deadline: Deadline, alive: Alive = _running, logs: Logs = _no_logs
) -> Sas:
    """Until the daemon answers list-sas on its control socket (it listens once started:
    after its XDP/TC programs are compiled and attached)."""

    def answer() -> tuple[Sas]:
        return (list_sas(socket, timeout=min(10.0, max(deadline.remaining(), 2.0))),)

    answered: tuple[Sas] = _poll(
        deadline, f"an answer on the control socket {socket}", answer, alive, logs
    )
    return answered[0]


def wait_tunnel(
    socket: Path, deadline: Deadline, alive: Alive = _running, logs: Logs = _no_logs
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Until an IKE SA is ESTABLISHED with an INSTALLED Child SA."""
    found = _poll(
        deadline,
        "an established IKE SA with an installed Child SA",
        lambda: established(list_sas(socket)),
        alive,
        logs,
    )
    sa, child = found
    return sa, child


def esp_counted(
    socket: Path, deadline: Deadline, minimum: int = 3, logs: Logs = _no_logs
) -> dict[str, Any]:
    """Until the kernel counted `minimum` ESP packets each way on the Child SA: the
    traffic went through the tunnel, not around it."""

    def counted() -> dict[str, Any] | None:
        pair = established(list_sas(socket))
        if pair is None:
            return None
        child = pair[1]
        if child.get("packets_out", 0) >= minimum and child.get("packets_in", 0) >= minimum:
            return child
        return None

    result: dict[str, Any] = _poll(
        deadline, f"{minimum} ESP packets counted each way", counted, _running, logs
    )
    return result


def ping_through(
    run: Callable[[Sequence[str], float], subprocess.CompletedProcess[str]],
    dst: str,
    deadline: Deadline,
    source: str | None = None,
) -> str:
    """`traffic.sh check`: three pings to `dst` answered (retried until the deadline).
    `run(argv, timeout)` runs it where the pings start (a namespace, this host)."""
    argv = ["sh", str(traffic_script()), "check", dst, str(max(int(deadline.remaining()), 5))]
    if source:
        argv.append(source)
    proc = run(argv, deadline.remaining() + 30)
    if proc.returncode != 0:
        raise deadline.fail(
            f"ping {source + ' -> ' if source else ''}{dst} through the tunnel failed",
            (proc.stdout + proc.stderr).strip(),
        )
    return proc.stdout


def prometheus_query(url: str, query: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The result vector of one PromQL query (Prometheus's HTTP API)."""
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(full, timeout=timeout) as reply:  # noqa: S310 - our URL
        data = json.loads(reply.read())
    if data.get("status") != "success":
        raise OSError(f"Prometheus answered {data.get('status')}: {data.get('error')}")
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def prometheus_scrapes(
    url: str,
    deadline: Deadline,
    job: str = "gateway",
    series: str | None = None,
    logs: Logs = _no_logs,
) -> str:
    """Until Prometheus at `url` has scraped the gateway (`up{job}` is 1) and, if given,
    holds `series` with a value above zero."""

    def scraped() -> str | None:
        up = prometheus_query(url, f'up{{job="{job}"}}')
        if not up or up[0]["value"][1] != "1":
            return None
        if series is None:
            return f"up{{job={job!r}}} = 1"
        found = prometheus_query(url, f"{series} > 0")
        if not found:
            return None
        return f"up{{job={job!r}}} = 1, {series} = {found[0]['value'][1]}"

    what = f"a scrape of job {job!r} by Prometheus at {url}" + (f" with {series}" if series else "")
    result: str = _poll(deadline, what, scraped, _running, logs, interval=1.0)
    return result


def prometheus_rules(url: str, deadline: Deadline, group: str = "ipsec-gateway") -> int:
    """Until Prometheus at `url` has loaded the gateway's alerting rules (deploy/
    prometheus/ipsec-alerts.yml) and evaluated each without error: their number."""

    def loaded() -> int | None:
        full = f"{url.rstrip('/')}/api/v1/rules"
        with urllib.request.urlopen(full, timeout=10) as reply:  # noqa: S310 - our URL
            groups = json.loads(reply.read())["data"]["groups"]
        rules = [r for g in groups if g["name"] == group for r in g["rules"]]
        evaluated = [r for r in rules if r.get("lastEvaluation", "").startswith("2")]
        if not rules or len(evaluated) < len(rules):
            return None
        broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
        if broken:
            raise deadline.fail("alerting rules fail to evaluate", "; ".join(broken))
        return len(rules)

    what = f"the alerting rules of group {group!r} loaded by Prometheus at {url}"
    result: int = _poll(deadline, what, loaded, _running, _no_logs, interval=1.0)
    return result


def describe(sa: dict[str, Any], child: dict[str, Any]) -> str:
    return (
        f"{sa.get('connection')} {sa.get('state')} {sa.get('local_addr')} <-> "
        f"{sa.get('remote_addr')}, {sa.get('connection')}.{child.get('name')} "
        f"{child.get('state')} {child.get('esp_proposal', '')}".rstrip()
    )


def run_here(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


__all__ = [
    "esp_counted",
    "established",
    "ping_through",
    "prometheus_rules",
    "prometheus_scrapes",
    "wait_daemon",
    "wait_tunnel",
]
