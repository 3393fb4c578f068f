"""`make lab`'s path on a host without kernel ESP: the lab inside a VM, driven from the host.

One VM boot: `lab up --no-tui --vm` returns with the tunnel up and traffic passed, `status`
reaches the agent in the VM and shows counters moving, the console's control path (the
token-guarded forwarded port) answers list-sas, and `down` leaves no VM process and no lab
directory behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.lab.local import LabOptions
from gateway.lab.vmmode import VmLab
from tests.support.lab import run_lab as lab


def child(status: dict[str, Any]) -> dict[str, Any]:
    (sa,) = status["sas"]
    assert sa["state"] == "ESTABLISHED"
    (c,) = sa["children"]
    assert c["state"] == "INSTALLED"
    return c


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lab_in_a_vm_from_the_host() -> None:
    labdir = Path(tempfile.mkdtemp(prefix="gwlv-", dir="/run")) / "lab"
    env = dict(os.environ, GATEWAY_LAB_DIR=str(labdir))
    vm_pid = None
    try:
        up = lab(["up", "--no-tui", "--vm", "--no-xdp"], env, timeout=1200)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "inside" in up.stdout or "booting a VM" in up.stdout
        vm_pid = json.loads((labdir / "state.json").read_text())["vm_pid"]

        first = json.loads(lab(["status", "--json"], env, timeout=120).stdout)
        assert first["mode"] == "vm" and first["up"]
        assert all(n["present"] for n in first["nodes"])
        before = child(first)
        time.sleep(5)
        after = child(json.loads(lab(["status", "--json"], env, timeout=120).stdout))
        assert after["packets_out"] > before["packets_out"]  # iperf3/ping keep flowing
        assert after["bytes_in"] > before["bytes_in"]

        # The console's path: gw-west's control API through the forwarded, token-guarded port.
        connector = VmLab(LabOptions(directory=labdir)).connector()

        async def list_sas() -> list[dict[str, Any]]:
            source = await connector()
            try:
                return await source.list_sas()
            finally:
                await source.close()

        sas = asyncio.run(list_sas())
        assert sas[0]["children"][0]["spi_out"] == after["spi_out"]
    finally:
        down = lab(["down"], env, timeout=400)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "could not tear down" not in down.stdout
    assert not labdir.exists()
    labdir.parent.rmdir()
    if vm_pid is not None:
        assert not group_alive(vm_pid)
