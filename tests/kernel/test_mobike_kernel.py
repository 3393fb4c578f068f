"""MOBIKE (RFC 4555) over real kernel ESP (the VM when the host kernel has none): our
daemon vs our daemon with the `xfrm` data plane. One test, doing a lot:

- hosts behind each gateway ping through the tunnel;
- the initiator gateway's address is replaced on its veth: its daemon notices (rtnetlink),
  sends UPDATE_SA_ADDRESSES from the new address, both daemons migrate their kernel
  states and policies; ping works again, both kernels' states and policy templates carry
  the new address, the SPIs stay and the kernel's packet counters carry on;
- `gateway ctl migrate --local` moves it once more by hand, with the same checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.netns import Netns
from tests.support.daemon import Gateway, ctl, gateway_config, wait_for

WEST, WEST2, WEST3, EAST = "192.0.2.1", "192.0.2.11", "192.0.2.21", "192.0.2.2"


def config(sock: Path, me: str, peer: str, start: bool) -> str:
    west = me == WEST
    text = gateway_config(
        socket=sock,
        listen=["0.0.0.0"] if west else [me],  # west sends from whatever address it has
        dataplane="xfrm",
        extra='retransmit_timeout = "2s"',
        conns=[
            {
                "name": "peer",
                "local": me,
                "remote": peer,
                "local_id": f"gw-{me}",
                "remote_id": f"gw-{peer}",
                "local_ts": ["10.1.0.0/24" if west else "10.2.0.0/24"],
                "remote_ts": ["10.2.0.0/24" if west else "10.1.0.0/24"],
                "start_action": "start" if start else "none",
            }
        ],
    )
    moves = f'"{WEST}", "{WEST2}", "{WEST3}"'
    if west:  # the addresses west may move to (announced to east as additional ones)
        return text.replace(f'local_addrs = ["{WEST}"]', f"local_addrs = [{moves}]")
    return text.replace(f'remote_addrs = ["{WEST}"]', f"remote_addrs = [{moves}]")


def xfrm(ns: Netns, what: str) -> str:
    return str(ns.run("ip", "xfrm", what).stdout)


def state_pairs(ns: Netns) -> set[tuple[str, str]]:
    return set(re.findall(r"^src (\S+) dst (\S+)", xfrm(ns, "state"), re.M))


def template_pairs(ns: Netns) -> set[tuple[str, str]]:
    return set(re.findall(r"tmpl src (\S+) dst (\S+)", xfrm(ns, "policy")))


def ping(a: Netns, b: Netns, count: int = 3) -> None:
    proc = a.run(
        "ping", "-c", str(count), "-W", "5", "-I", "10.1.0.1", "10.2.0.1", timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"{proc.stdout}\n{diagnose(a)}\n{diagnose(b)}")


def diagnose(ns: Netns) -> str:
    """What the kernel holds, for a failure message."""
    out = [f"== {ns.name}"]
    for args in (
        ("ip", "addr"),
        ("ip", "route"),
        ("ip", "neigh"),
        ("ip", "-s", "xfrm", "state"),
        ("ip", "xfrm", "policy"),
        ("cat", "/proc/net/xfrm_stat"),
    ):
        out.append(" ".join(args))
        out.append(str(ns.run(*args, check=False).stdout))
    return "\n".join(out)


def child(gw: Gateway) -> dict[str, Any]:
    (sa,) = gw.sas()
    (c,) = sa["children"]
    return dict(c)


def migrations(west: Gateway, east: Gateway) -> tuple[int, int]:
    """How many moves each daemon has logged (cheaper to read than a `gateway ctl`)."""
    return west.log_text().count("event=ike-migrated"), east.log_text().count("event=ike-migrated")


def assert_on(a: Netns, b: Netns, west_addr: str) -> None:
    """Both kernels' states and policy templates run between west_addr and EAST."""
    pairs = {(west_addr, EAST), (EAST, west_addr)}
    for ns in (a, b):
        assert state_pairs(ns) == pairs, xfrm(ns, "state")
        assert template_pairs(ns) == pairs, xfrm(ns, "policy")


def test_daemons_follow_an_address_change_over_kernel_esp(
    netns_pair: tuple[Netns, Netns], tmp_path: Path, run_dir: Path
) -> None:
    a, b = netns_pair
    a.ip("addr", "add", "10.1.0.1/32", "dev", "lo")
    b.ip("addr", "add", "10.2.0.1/32", "dev", "lo")
    # on-link routes: they survive the gateway's address changes (XFRM picks the tunnel)
    a.ip("route", "add", "10.2.0.0/24", "dev", "eth0")
    b.ip("route", "add", "10.1.0.0/24", "dev", "eth0")
    east = Gateway.start(b, tmp_path, "east", config(run_dir / "e.sock", EAST, WEST, False))
    west = Gateway.start(a, tmp_path, "west", config(run_dir / "w.sock", WEST, EAST, True))
    try:
        (w,) = west.installed("peer")
        (e,) = east.installed("peer")
        assert w["mobike"] and e["mobike"] and e["additional_addrs"] == [WEST2, WEST3]
        assert (w["local_port"], w["remote_port"]) == (4500, 4500)  # floated, no NAT
        ping(a, b)
        assert_on(a, b, WEST)
        c = child(west)  # (each `gateway ctl` is a Python start: seconds under TCG)
        spis, sent = (c["spi_in"], c["spi_out"]), c["packets_out"]
        assert sent >= 3

        # west's address is replaced (the new one first: removing a device's last IPv4
        # address flushes its routes): its daemon roams, east follows
        a.run("sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1")
        a.ip("addr", "add", f"{WEST2}/24", "dev", "eth0")
        a.ip("addr", "del", f"{WEST}/24", "dev", "eth0")
        wait_for("both daemons migrated", lambda: migrations(west, east) == (1, 1), timeout=120)
        assert "event=mobike-roam" in west.log_text()
        ping(a, b)
        assert_on(a, b, WEST2)
        (w,), (e,) = west.sas(), east.sas()
        assert (w["local_addr"], e["remote_addr"]) == (WEST2, WEST2)
        c = w["children"][0]
        assert (c["spi_in"], c["spi_out"]) == spis and c["encap"] is False
        assert c["packets_out"] >= sent + 3  # the kernel's counters carried over

        # by hand: one more address, `gateway ctl migrate --local`
        a.ip("addr", "add", f"{WEST3}/24", "dev", "eth0")
        out = ctl(west.socket, "migrate", "peer", "--local", WEST3, "--timeout", "120").stdout
        assert f"now on {WEST3} - {EAST}" in out
        wait_for("east migrated again", lambda: migrations(west, east) == (2, 2))
        ping(a, b)
        assert_on(a, b, WEST3)
        (e,) = east.sas()
        assert e["remote_addr"] == WEST3
        assert (e["children"][0]["spi_in"], e["children"][0]["spi_out"]) == (spis[1], spis[0])
    finally:
        codes = (west.stop(60), east.stop(60))
    assert codes == (0, 0)
    assert state_pairs(a) == state_pairs(b) == set()
