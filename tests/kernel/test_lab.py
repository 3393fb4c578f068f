"""The lab, driven as a script would drive it, on a kernel with ESP (the VM here).

`gateway lab up --no-tui` must return only once the tunnel is up and traffic has passed
through real ESP; `status --json` must show it; `down` must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from gateway.lab.topology import NODES
from gateway.netns import list_ours
from tests.support.lab import run_lab as lab


def namespaces() -> set[str]:
    return set(list_ours(""))


@pytest.mark.parametrize(
    ("peer", "nat"),
    [("gateway", False), ("gateway", True), ("strongswan", False)],
    ids=["routed", "nat", "strongswan-peer"],
)
def test_lab_up_status_down(peer: str, nat: bool) -> None:
    prefix = f"gwl{os.getpid() % 1000}{int(nat)}{peer[0]}-"
    # The lab keeps unix sockets in its directory: a short guest-local path (not the
    # VM's 9p shares, and within the 107-byte socket path limit).
    labdir = Path(tempfile.mkdtemp(prefix="gwl-", dir="/run")) / "lab"
    env = dict(os.environ, GATEWAY_LAB_DIR=str(labdir), GATEWAY_LAB_PREFIX=prefix)
    up_args = ["up", "--no-tui", "--no-vm", "--no-xdp", "--peer", peer]
    up_args += ["--nat"] if nat else []
    try:
        up = lab(up_args, env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ESTABLISHED" in up.stdout

        st = lab(["status", "--json"], env)
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["up"] and status["mode"] == "netns" and status["nat"] is nat
        assert status["peer"] == peer
        assert [n["name"] for n in status["nodes"]] == list(NODES)
        assert all(n["present"] for n in status["nodes"])
        assert all(p["running"] for p in status["processes"]), status["processes"]
        (sa,) = status["sas"]
        assert sa["state"] == "ESTABLISHED"
        (child,) = sa["children"]
        assert child["state"] == "INSTALLED"
        assert child["encap"] is nat  # behind the NAT, ESP rides in UDP 4500
        assert child["packets_out"] >= 3 and child["packets_in"] >= 3
        if nat:
            assert sa["remote_addr"].startswith("203.0.113.2")
    finally:
        down = lab(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not {prefix + n for n in NODES} & namespaces()
    assert not labdir.exists()
    labdir.parent.rmdir()
    after = lab(["status"], env)
    assert after.returncode == 1 and "lab: down" in after.stdout
