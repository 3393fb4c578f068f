"""updown per child, driven by the daemon: two daemons with real IKE engines joined in
memory, real programs run by the hook runner. A route-based child (its interface and
routes from a stand-in kernel, the host kernel has none) runs its program with
strongSwan's PLUTO_* variables and ours (interface, if_id, MTU, route table, SPIs) on up,
rekey (updown_rekey) and down (GW_REASON); a failing and a hanging program are reported
(`hook-failed`, published), counted in stats and in Prometheus' ipsec_hook_runs_total,
and never hold up the event loop; the PSK never reaches the log."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import metrics
from gateway.config.reader import parse_config
from gateway.daemon import Daemon
from gateway.daemon import core as daemon_core
from tests.support.daemon import PSK
from tests.support.inmemory import children, link_in_memory, until
from tests.support.inmemory import config_text as pair_config
from tests.support.tunnels import FakeTunnelKernel, KernelDataplane

RECORDER = """#!/bin/sh
env | grep -E '^(PLUTO|GW)_' | sort > "{out}/$GW_EVENT.$$"
echo "hook output mentions {psk}"
"""


def child_extra(program: Path) -> str:
    return f"""if_id = 7
interface = "ipsec-east"
routes = ["10.2.0.0/24"]
route_table = 220
route_metric = 5
updown = "{program} --flag"
updown_rekey = true
"""


def second_child(local: str, remote: str, start: str, program: str | None) -> str:
    text = f"""
[connections.east.children.more]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["aes256gcm16-x25519"]
start_action = "{start}"
"""
    return text + (f'updown = "{program}"\n' if program else "")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


async def test_updown_runs_with_the_documented_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    out = tmp_path / "runs"
    out.mkdir()
    recorder = tmp_path / "updown.sh"
    recorder.write_text(RECORDER.format(out=out, psk=PSK))
    recorder.chmod(0o755)
    failing = tmp_path / "fail.sh"
    # fails its up (after 1.5 s), hangs in its down
    failing.write_text('#!/bin/sh\n[ "$GW_EVENT" = down ] && exec sleep 30\nsleep 1.5\nexit 3\n')
    failing.chmod(0o755)
    west_text = pair_config(
        tmp_path / "w.sock",
        "127.0.0.1",
        "127.0.0.2",
        "start",
        dataplane="xfrm",
        child_extra=child_extra(recorder),
    )
    west_text += second_child("10.1.9.0/24", "10.2.9.0/24", "start", str(failing))
    west_text += '\n[gateway.hooks]\ntimeout = "2s"\nmax_concurrent = 2\n'
    east_text = pair_config(tmp_path / "e.sock", "127.0.0.2", "127.0.0.1", "none")
    east_text += second_child("10.2.9.0/24", "10.1.9.0/24", "none", None)
    kernel = FakeTunnelKernel()
    west = Daemon(
        parse_config(west_text, "west.toml"),
        dataplane=KernelDataplane(),
        tunnel_kernel=lambda: kernel,
    )
    east = Daemon(parse_config(east_text, "east.toml"))
    events: list[dict[str, Any]] = []
    publish = west.control.publish

    def record(event_type: str, **fields: Any) -> None:
        events.append({"type": event_type, **fields})
        publish(event_type, **fields)

    west.control.publish = record  # type: ignore[method-assign]
    link_in_memory(west, east)
    caplog.set_level(logging.INFO)
    await east.start()
    await west.start()
    try:
        await until("both children", lambda: len(children(west)) == 2)
        await until("up run", lambda: any(out.glob("up.*")))
        (up_file,) = out.glob("up.*")
        await until("up written", lambda: "GW_SPI_OUT" in up_file.read_text())
        up = read_env(up_file)
        net = next(c for c in children(west) if c["name"] == "net")
        assert up["PLUTO_VERB"] == "up-client" and up["PLUTO_VERSION"] == "1.1"
        assert (up["PLUTO_CONNECTION"], up["GW_CONNECTION"], up["GW_CHILD"]) == (
            "net",
            "east",
            "net",
        )
        assert (up["PLUTO_ME"], up["PLUTO_PEER"]) == ("127.0.0.1", "127.0.0.2")
        assert (up["PLUTO_MY_CLIENT"], up["PLUTO_PEER_CLIENT"]) == ("10.1.0.0/24", "10.2.0.0/24")
        assert (up["PLUTO_INTERFACE"], up["PLUTO_IF_ID_IN"], up["PLUTO_IF_ID_OUT"]) == (
            "ipsec-east",
            "7",
            "7",
        )
        assert (up["GW_MTU"], up["GW_ROUTE_TABLE"], up["GW_ROUTE_METRIC"]) == ("1446", "220", "5")
        assert (up["GW_SPI_IN"], up["GW_SPI_OUT"]) == (net["spi_in"], net["spi_out"])
        assert up["GW_ESP"] == "aes256gcm16" and up["PLUTO_MY_ID"] == "127.0.0.1"
        assert not any(PSK in value for value in up.values())

        # the failing Child's program fails (after 1.5 s): the loop keeps answering meanwhile
        started = time.monotonic()
        for _ in range(10):
            west.list_sas()
            await asyncio.sleep(0.05)
        assert time.monotonic() - started < 1.4
        await until("failure reported", lambda: any(e["type"] == "hook-failed" for e in events))
        failed = next(e for e in events if e["type"] == "hook-failed")
        assert (failed["child"], failed["status"], failed["rc"]) == ("more", "failed", 3)

        # rekey (updown_rekey): the new SPIs and the old ones
        await west.rekey("east.net", timeout=5)
        await until("rekey run", lambda: any(out.glob("rekey.*")))
        (rekey_file,) = out.glob("rekey.*")
        await until("rekey written", lambda: "GW_SPI_OUT" in rekey_file.read_text())
        rekey = read_env(rekey_file)
        assert rekey["PLUTO_VERB"] == "rekey-client"
        assert rekey["GW_OLD_SPI_IN"] == net["spi_in"] and rekey["GW_SPI_IN"] != net["spi_in"]

        # a hanging program is killed after [gateway.hooks] timeout
        await east.terminate("east.more", timeout=5)
        await until("more down", lambda: len(children(west)) == 1)
        await until("timeout", lambda: (west.stats().get("hooks") or {}).get("timeout") == 1)

        # down with its reason
        await east.terminate("east.net", timeout=5)
        await until("down run", lambda: any(out.glob("down.*")))
        (down_file,) = out.glob("down.*")
        await until("down written", lambda: "GW_SPI_OUT" in down_file.read_text())
        down = read_env(down_file)
        assert (down["PLUTO_VERB"], down["GW_REASON"]) == ("down-client", "delete")

        # the down program wrote its file; it is counted once it has exited
        await until("down counted", lambda: west.stats()["hooks"]["ok"] >= 3)
        hooks = west.stats()["hooks"]
        assert (hooks["ok"], hooks["failed"], hooks["timeout"]) == (3, 1, 1)
        assert hooks["running"] == hooks["queued"] == 0
        registry = metrics.make_registry(west)  # scraped from another thread, as the exporter
        text = (await asyncio.to_thread(metrics.render_text, registry)).decode()
        assert 'ipsec_hook_runs_total{result="failed"} 1.0' in text
        assert 'ipsec_hook_runs_total{result="timeout"} 1.0' in text
        assert 'ipsec_tunnel_up{interface="ipsec-east"} 0.0' in text
        assert "hook output mentions <redacted>" in caplog.text
        assert PSK not in caplog.text
    finally:
        await west.shutdown()
        await east.shutdown()
