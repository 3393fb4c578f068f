"""Route-based tunnels with 0.0.0.0/0 and ::/0 selectors between our daemon (two
workers) and strongSwan's charon (kernel-netlink, `if_id_in`/`if_id_out` on its side),
over real ESP in the VM. One test, many checks: every start is dear under emulation.

    gw (ours, workers = 2)                              charon
    lo 10.1.0.1 fd00:1::1   ipsec-v4 ══ wan0 (MTU 1400) ══ xv4 (if_id 513) ─ lan0 ─ host
    lo 10.1.1.1 fd00:1:1::1 ipsec-v6 ══    v4 + v6      ══ xv6 (if_id 514)   10.2.0.10
                                                          lo 10.3.0.1 fd00:3::1   fd00:2::10

- v4: IPv4 outside, AES-GCM-16, MOBIKE; its interface ipsec-v4 (if_id 0x101) exists
  before the daemon starts: adopted, and left in place (down) when the daemon stops;
  routes 10.2.0.0/24 and fd00:2::/64 in table 220, metric 50.
- v6: IPv6 outside with NAT-T forced (`encap`), AES-CBC + HMAC-SHA-256; ipsec-v6
  (if_id 0x102) created by the daemon with the MTU the negotiated overhead allows (1310
  on the 1400-byte path) and removed when it stops; routes 10.3.0.0/24, fd00:3::/64.

Checked: SAs and policies carry the if_ids, IPv4 and IPv6 inside both tunnels, a
full-size Don't-Fragment packet crosses the v6 tunnel, nothing leaves the WAN link in
clear; updown runs with the interface and MTU; a rekey under a ping stream loses nothing
and moves neither interface nor route; a MOBIKE move changes the SAs' addresses under the
same interface; charon closing v6 withdraws its routes at once and takes its interface
down; list-sas, stats and Prometheus show each interface's state.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway import netns as netns_mod
from gateway.netns import Netns
from tests.support.capture import Capture, esp_spis
from tests.support.daemon import PSK, Gateway, api, ns_get, socket_dir, wait_for
from tests.support.fixtures import NetnsFactory
from tests.support.strongswan import NETLINK_PLUGINS, StrongSwan

OURS4, OURS4_MOVED, THEIRS4 = "192.0.2.1", "192.0.2.3", "192.0.2.2"
OURS6, THEIRS6 = "2001:db8::1", "2001:db8::2"
CHARON_EXTRA = "  install_routes = no\n  retransmit_timeout = 4.0\n  retransmit_tries = 4\n"

RECORDER = """#!/bin/sh
env | grep -E '^(PLUTO|GW)_' | sort > "{out}/$GW_CONNECTION.$GW_EVENT.$$"
"""


def our_config(sock: Path, updown: Path) -> str:
    common = f"""ike_proposals = ["aes256gcm16-prfsha384-x25519"]
local = {{ auth = "psk", id = "gw-ours" }}
remote = {{ auth = "psk", id = "gw-charon" }}
psk = "{PSK}"
keyingtries = 0
"""
    child = f"""local_ts = ["0.0.0.0/0", "::/0"]
remote_ts = ["0.0.0.0/0", "::/0"]
start_action = "start"
updown = "{updown}"
"""
    return f"""[gateway]
listen = ["{OURS4}", "{OURS4_MOVED}", "{OURS6}"]
control_socket = "{sock}"
metrics_listen = "127.0.0.1:9811"
dataplane = "xfrm"
workers = 2

[connections.v4]
local_addrs = ["{OURS4}"]
remote_addrs = ["{THEIRS4}"]
{common}
[connections.v4.children.net]
{child}esp_proposals = ["aes256gcm16"]
if_id = 0x101
interface = "ipsec-v4"
routes = ["10.2.0.0/24", "fd00:2::/64"]
route_table = 220
route_metric = 50
updown_rekey = true

[connections.v6]
local_addrs = ["{OURS6}"]
remote_addrs = ["{THEIRS6}"]
encap = true
{common}
[connections.v6.children.net]
{child}esp_proposals = ["aes128-sha256"]
if_id = 0x102
interface = "ipsec-v6"
routes = ["10.3.0.0/24", "fd00:3::/64"]
"""


def swan_config() -> str:
    def conn(name: str, local: str, remote: str, esp: str, if_id: int, extra: str) -> str:
        return f"""  {name} {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = aes256gcm16-prfsha384-x25519
    mobike = yes
{extra}    local {{
      auth = psk
      id = gw-charon
    }}
    remote {{
      auth = psk
      id = gw-ours
    }}
    children {{
      net {{
        local_ts = 0.0.0.0/0,::/0
        remote_ts = 0.0.0.0/0,::/0
        esp_proposals = {esp}
        if_id_in = {if_id}
        if_id_out = {if_id}
        start_action = none
      }}
    }}
  }}
"""

    return (
        "connections {\n"
        + conn("v4", THEIRS4, f"{OURS4},{OURS4_MOVED}", "aes256gcm16", 513, "")
        + conn("v6", THEIRS6, OURS6, "aes128-sha256", 514, "    encap = yes\n")
        + "}\nsecrets {\n  ike-ours {\n    id-a = gw-ours\n    id-b = gw-charon\n"
        + f'    secret = "{PSK}"\n  }}\n}}\n'
    )


def links(ns: Netns) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(ns.ip("-j", "-d", "link").stdout)}


def our_routes(ns: Netns, *table: str) -> set[str]:
    out = set()
    for family in ("-4", "-6"):
        for r in json.loads(ns.ip(family, "-j", "route", "show", *table, "proto", "78").stdout):
            out.add(f"{r['dst']} {r['dev']} {r.get('metric', 0)}")
    return out


def ping(ns: Netns, src: str, dst: str, *extra: str) -> None:
    out = ns.run("ping", "-c", "2", "-i", "0.3", "-W", "5", *extra, "-I", src, dst, check=False)
    assert out.returncode == 0, f"ping {src} -> {dst}: {out.stdout}{out.stderr}"


def child_of(sock: Path, conn: str) -> dict[str, Any] | None:
    for sa in api(sock, "list-sas"):
        if sa["connection"] == conn and sa["state"] == "ESTABLISHED" and sa["children"]:
            child = sa["children"][0]
            return dict(child, _sa=sa) if child["state"] == "INSTALLED" else None
    return None


def runs(out: Path, conn: str, event: str) -> list[dict[str, str]]:
    found = []
    for path in sorted(out.glob(f"{conn}.{event}.*")):
        text = path.read_text()
        if "GW_SPI_OUT" in text:
            found.append(dict(line.split("=", 1) for line in text.splitlines()))
    return found


def both_families(out: Path, conn: str, event: str) -> list[dict[str, str]]:
    """The runs of one event once there is one per selector pair: 0.0.0.0/0 and ::/0 make
    two pairs of the same family (as strongSwan runs updown), [] until both ran."""
    found = runs(out, conn, event)
    return found if len(found) == 2 else []


def test_route_based_interop_with_strongswan(make_netns: NetnsFactory, tmp_path: Path) -> None:
    gw, sw_ns, host = make_netns("gwrg"), make_netns("gwrs"), make_netns("gwrh")
    netns_mod.veth(gw, "wan0", sw_ns, "wan0", mtu=1400)
    netns_mod.veth(sw_ns, "lan0", host, "eth0")
    for addr in (f"{OURS4}/24", f"{OURS4_MOVED}/24"):
        gw.ip("addr", "add", addr, "dev", "wan0")
    gw.ip("addr", "add", f"{OURS6}/64", "dev", "wan0", "nodad")
    sw_ns.ip("addr", "add", f"{THEIRS4}/24", "dev", "wan0")
    sw_ns.ip("addr", "add", f"{THEIRS6}/64", "dev", "wan0", "nodad")
    for a in ("10.1.0.1/32", "fd00:1::1/128", "10.1.1.1/32", "fd00:1:1::1/128"):
        gw.ip("addr", "add", a, "dev", "lo")
    for family in ("-4", "-6"):  # our routes of v4 go to table 220
        gw.ip(family, "rule", "add", "pref", "100", "lookup", "220")
    sw_ns.ip("addr", "add", "10.2.0.1/24", "dev", "lan0")
    sw_ns.ip("addr", "add", "fd00:2::1/64", "dev", "lan0", "nodad")
    sw_ns.ip("addr", "add", "10.3.0.1/32", "dev", "lo")
    sw_ns.ip("addr", "add", "fd00:3::1/128", "dev", "lo")
    for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        sw_ns.run("sysctl", "-qw", setting)
    host.ip("addr", "add", "10.2.0.10/24", "dev", "eth0")
    host.ip("addr", "add", "fd00:2::10/64", "dev", "eth0", "nodad")
    host.ip("route", "add", "default", "via", "10.2.0.1")
    host.ip("-6", "route", "add", "default", "via", "fd00:2::1")
    # charon's side: XFRM interfaces made outside charon, as strongSwan does it
    for dev, if_id, nets in (
        ("xv4", "513", ("10.1.0.0/24", "fd00:1::/64")),
        ("xv6", "514", ("10.1.1.0/24", "fd00:1:1::/64")),
    ):
        sw_ns.ip("link", "add", dev, "type", "xfrm", "if_id", if_id)
        sw_ns.ip("link", "set", dev, "up")
        for net in nets:
            sw_ns.ip("route", "add", net, "dev", dev)
    # ours: ipsec-v4 exists before the daemon (adopted); ipsec-v6 is the daemon's to make
    gw.ip("link", "add", "ipsec-v4", "type", "xfrm", "if_id", "0x101")
    adopted_index = links(gw)["ipsec-v4"]["ifindex"]

    out = tmp_path / "updown"
    out.mkdir()
    updown = tmp_path / "updown.sh"
    updown.write_text(RECORDER.format(out=out))
    updown.chmod(0o755)
    timings: dict[str, float] = {}
    started = time.monotonic()
    with socket_dir() as run_dir:
        (run_dir / "swan").mkdir()
        with StrongSwan(
            sw_ns, plugins=NETLINK_PLUGINS, workdir=run_dir / "swan", extra_charon=CHARON_EXTRA
        ) as sw:
            sw.start(swan_config(), timeout=600)
            ours = Gateway.start(gw, tmp_path, "ours", our_config(run_dir / "o.sock", updown))
            try:
                _check(gw, sw_ns, host, sw, ours, out, run_dir, adopted_index, timings, started)
            except AssertionError as exc:
                exc.add_note(f"--- ours ---\n{ours.log_text()[-8000:]}")
                exc.add_note(f"--- charon ---\n{sw.logs()[-6000:]}")
                raise
            finally:
                code = ours.stop(120)
    assert code == 0
    timings["stopped"] = time.monotonic() - started
    # the created interface went with the daemon, the adopted one stays (down), and so
    # do none of our routes
    after = links(gw)
    assert "ipsec-v6" not in after
    assert after["ipsec-v4"]["ifindex"] == adopted_index
    assert "UP" not in after["ipsec-v4"]["flags"]
    assert not our_routes(gw, "table", "all")
    print(f"\nroute-based interop: {', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}")


def _check(
    gw: Netns,
    sw_ns: Netns,
    host: Netns,
    sw: StrongSwan,
    ours: Gateway,
    out: Path,
    run_dir: Path,
    adopted_index: int,
    timings: dict[str, float],
    started: float,
) -> None:
    sock = ours.socket
    v4 = wait_for("v4 installed", lambda: child_of(sock, "v4"), 300)
    v6 = wait_for("v6 installed", lambda: child_of(sock, "v6"), 300)
    timings["established"] = time.monotonic() - started
    assert v4["interface"] == "ipsec-v4" and v6["interface"] == "ipsec-v6"
    assert v4["local_ts"] == v4["remote_ts"] == ["0.0.0.0/0", "::/0"]
    assert v6["encap"] and not v4["encap"]
    ifs = links(gw)
    assert ifs["ipsec-v4"]["ifindex"] == adopted_index  # adopted, not made anew
    assert ifs["ipsec-v4"]["linkinfo"]["info_data"]["if_id"] == "0x101"
    assert ifs["ipsec-v6"]["linkinfo"]["info_data"]["if_id"] == "0x102"
    assert "UP" in ifs["ipsec-v4"]["flags"] and "UP" in ifs["ipsec-v6"]["flags"]
    # the MTUs the negotiated overheads allow on the 1400-byte path (docs/routing.md)
    assert (ifs["ipsec-v4"]["mtu"], ifs["ipsec-v6"]["mtu"]) == (1346, 1310)
    assert our_routes(gw, "table", "220") == {
        "10.2.0.0/24 ipsec-v4 50",
        "fd00:2::/64 ipsec-v4 50",
    }
    assert our_routes(gw) == {"10.3.0.0/24 ipsec-v6 0", "fd00:3::/64 ipsec-v6 1024"}
    # every state and policy carries its interface's if_id; charon's its own
    xfrm = gw.run("ip", "xfrm", "state").stdout + gw.run("ip", "xfrm", "policy").stdout
    assert set(re.findall(r"if_id (0x[0-9a-f]+)", xfrm)) == {"0x101", "0x102"}
    swan = sw_ns.run("ip", "xfrm", "policy").stdout
    assert set(re.findall(r"if_id (0x[0-9a-f]+)", swan)) == {"0x201", "0x202"}
    theirs = {sa_name: sa for entry in sw.list_sas() for sa_name, sa in [(entry["name"], entry)]}
    assert set(theirs) == {"v4", "v6"}

    # IPv4 and IPv6 inside both tunnels, captured on our WAN link (egress only)
    cap = Capture(gw, "wan0", run_dir / "wan.pcap", out_only=True)
    cap.ready()
    ping(gw, "10.1.0.1", "10.2.0.10")
    ping(gw, "fd00:1::1", "fd00:2::10")
    ping(gw, "10.1.1.1", "10.3.0.1")
    ping(gw, "fd00:1:1::1", "fd00:3::1")
    ping(gw, "10.1.1.1", "10.3.0.1", "-M", "do", "-s", str(1310 - 28))  # full size, DF
    wire = cap.stop()
    assert not [ln for ln in wire if re.search(r"\b(10\.[123]\.|fd00:)", ln)], wire[:5]
    assert esp_spis(wire, encap=False).get(int(v4["spi_out"], 16), 0) >= 4
    assert esp_spis(wire, encap=True).get(int(v6["spi_out"], 16), 0) >= 6
    timings["traffic"] = time.monotonic() - started

    # updown: up for both, with interface, MTU and table
    up4 = wait_for("v4 up runs", lambda: both_families(out, "v4", "up"))
    env = {k: v for r in up4 for k, v in r.items()}
    assert (env["PLUTO_INTERFACE"], env["PLUTO_IF_ID_IN"], env["GW_MTU"]) == (
        "ipsec-v4",
        "257",
        "1346",
    )
    assert (env["GW_ROUTE_TABLE"], env["GW_ROUTE_METRIC"], env["PLUTO_PEER"]) == (
        "220",
        "50",
        THEIRS4,
    )
    assert {r["PLUTO_VERB"] for r in up4} == {"up-client", "up-client-v6"}
    wait_for("v6 up run", lambda: runs(out, "v6", "up"))

    # a rekey under a ping stream: nothing lost, interface and routes untouched
    pinger = gw.popen(
        "ping", "-i", "0.2", "-c", "25", "-W", "5", "-I", "10.1.0.1", "10.2.0.10",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api(sock, "rekey", name="v4.net", timeout=120)
    text = pinger.communicate(timeout=120)[0].decode()
    assert " 25 received" in text, text
    new = wait_for(
        "v4 rekeyed", lambda: (c := child_of(sock, "v4")) and c["spi_in"] != v4["spi_in"] and c
    )
    assert links(gw)["ipsec-v4"]["ifindex"] == adopted_index
    assert "10.2.0.0/24 ipsec-v4 50" in our_routes(gw, "table", "220")
    rekeyed = wait_for("rekey run", lambda: runs(out, "v4", "rekey"))
    assert rekeyed[0]["GW_OLD_SPI_IN"] == v4["spi_in"] and rekeyed[0]["GW_SPI_IN"] == new["spi_in"]
    timings["rekey"] = time.monotonic() - started

    # MOBIKE: the SAs move to our second address, the interface and routes stay
    api(sock, "migrate", name="v4", local_addr=OURS4_MOVED, timeout=120)
    wait_for(
        "SAs moved",
        lambda: f"src {OURS4_MOVED} dst {THEIRS4}" in gw.run("ip", "xfrm", "state").stdout,
    )
    assert links(gw)["ipsec-v4"]["ifindex"] == adopted_index
    ping(gw, "10.1.0.1", "10.2.0.10")
    ping(gw, "fd00:1::1", "fd00:2::10")
    timings["mobike"] = time.monotonic() - started

    # charon closes v6: its routes withdrawn at once, its interface down, a down run
    sw.swanctl("--terminate", "--child", "net", "--ike", "v6", timeout=120)
    wait_for("v6 routes withdrawn", lambda: not our_routes(gw))
    assert "UP" not in links(gw)["ipsec-v6"]["flags"]
    downs = wait_for("v6 down runs", lambda: both_families(out, "v6", "down"))
    assert {d["PLUTO_VERB"] for d in downs} == {"down-client", "down-client-v6"}
    assert {d["GW_REASON"] for d in downs} == {"delete"}

    # what the operator sees: stats (merged over the workers) and Prometheus
    tunnels = {t["interface"]: t for t in api(sock, "stats")["tunnels"]}
    assert tunnels["ipsec-v4"]["up"] and tunnels["ipsec-v4"]["children"] == 1
    assert tunnels["ipsec-v4"]["tx_packets"] > 30 and tunnels["ipsec-v4"]["routes"] == 2
    assert not tunnels["ipsec-v6"]["up"] and tunnels["ipsec-v6"]["children"] == 0
    metrics = ns_get(gw, "http://127.0.0.1:9811/metrics")
    assert 'ipsec_tunnel_up{interface="ipsec-v4"} 1.0' in metrics
    assert 'ipsec_tunnel_up{interface="ipsec-v6"} 0.0' in metrics
    assert 'ipsec_interface_mtu{interface="ipsec-v4"} 1346.0' in metrics
    assert 'ipsec_hook_runs_total{result="ok"}' in metrics
