"""The data plane's promise, in the running daemon over real kernel ESP (the VM when the
host kernel has none): ONE test with `[gateway.xdp]` fully switched on (one bcc
compile; VM time is expensive) that checks

- offload: a Child with `offload = "crypto"` and `set_mark_out` installed on netdevsim
  (tests/support/netdevsim.py; its ESP policy-routed through nsim0, IKE on the veth):
  list-sas, `ipsec_child_sa_info{offload}` say crypto on nsim0 and the simulated NIC
  counts the tunnel's packets; a Child with `offload = "auto"` on the veth falls back
  to software with its reason, one log line and a counter; `crypto` on the veth fails
  the Child SA with the device and the reason; `gateway doctor -i nsim0` lists the modes;
- steering: with `steer_cpus = "all"` (2 vCPUs) ESP of the Child arriving on the other
  CPU is redirected to the Child's CPU (list-sas `cpu`, ipsec_xdp_steered_packets_total);
- unknown-SPI ESP dropped at XDP (`esp_unknown_spi`, exact count) while the tunnel's
  traffic and its rekey pass untouched;
- the IKE_SA_INIT shield: bursts from random spoofed sources shed by the global budget
  (`ike_over_budget`), a loud single source by its per-source limit
  (`ike_rate_limited`), while a legitimate peer still connects;
- MSS clamp of a TCP SYN entering the tunnel (ipsec_mss_clamped_total);
- per-SA counters in /metrics from the XDP slots matching the packets sent, across a
  rekey and after the Child SA is deleted; the 2^20-slot space in use;
- after SIGTERM no program, filter or clsact qdisc is left.

West (a) runs the XDP programs on its WAN (eth0) and LAN (lan0); east (b) is a plain
daemon; a LAN host behind west pings a host behind east through the tunnel."""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.netns import Netns, veth
from tests.support import netdevsim
from tests.support.daemon import (
    Gateway,
    Samples,
    api,
    gateway_config,
    scrape_in,
    socket_dir,
    wait_for,
)
from tests.support.fixtures import NetnsFactory
from tests.support.xdp import esp_frame, ike_init_frame, mac_of, send_frames

WEST, EAST = "192.0.2.1", "192.0.2.2"
MARK = 0x64  # set_mark_out of the offloaded Child: policy-routed through nsim0
METRICS = "http://127.0.0.1:9810/metrics"
XDP = """
counters_interval = 0
[gateway.xdp]
wan_interface = "eth0"
lan_interface = "lan0"
steer_cpus = "all"
drop_unknown_spi = true
ike_init_rate = 2
ike_init_burst = 2
ike_init_budget = 20
ike_init_budget_burst = 20
max_child_sas = 1048576
"""


# Children of connection peer: (name, west's TS, east's TS, ESP proposal, west's keys)
PEER_CHILDREN = (
    ("net", "10.1.0.0/24", "10.2.0.0/24", "aes256gcm16", 'offload = "auto"'),
    # netdevsim: AES-GCM-128 with a 128-bit ICV, no ESN, no UDP encapsulation
    (
        "off",
        "10.1.0.0/24",
        "10.3.0.0/24",
        "aes128gcm16",
        f'offload = "crypto"\nset_mark_out = {MARK}',
    ),
    (
        "bad",
        "10.1.0.0/24",
        "10.6.0.0/24",
        "aes128gcm16",
        'offload = "crypto"\noffload_interface = "eth0"',
    ),
)


def configs(run_dir: Path) -> tuple[str, str]:
    """West: connection peer (initiator) with Children net (auto), off (crypto on
    nsim0) and bad (crypto on the veth, initiated by the test); connection late
    (responder). East: the mirror, plain."""

    def conns(me: str, peer: str, west: bool) -> list[dict[str, Any]]:
        peer_conn = {
            "name": "peer",
            "local": me,
            "remote": peer,
            "local_id": f"gw-{me}",
            "remote_id": f"gw-{peer}",
            "children": [
                {
                    "child": name,
                    "local_ts": [ts_w if west else ts_e],
                    "remote_ts": [ts_e if west else ts_w],
                    "esp": [esp],
                    "start_action": "start" if west and name != "bad" else "none",
                    "child_extra": extra if west else "",
                }
                for name, ts_w, ts_e, esp, extra in PEER_CHILDREN
            ],
        }
        late = {
            "name": "late",
            "local": me,
            "remote": peer,
            "local_id": "late-west" if west else "late-east",
            "remote_id": "late-east" if west else "late-west",
            "child": "late",
            "local_ts": ["10.5.0.0/24" if west else "10.4.0.0/24"],
            "remote_ts": ["10.4.0.0/24" if west else "10.5.0.0/24"],
        }
        return [peer_conn, late]

    west = gateway_config(
        socket=run_dir / "w.sock",
        listen=[WEST],
        dataplane="xfrm",
        metrics="127.0.0.1:9810",
        conns=conns(WEST, EAST, True),
        extra=XDP,
    )
    east = gateway_config(
        socket=run_dir / "e.sock",
        listen=[EAST],
        dataplane="xfrm",
        conns=conns(EAST, WEST, False),
        # the legitimate peer keeps trying through the flood: every second, 20 times
        extra='retransmit_timeout = "1s"\nretransmit_base = 1.0\nretransmit_tries = 20',
    )
    return west, east


def children(gw: Gateway, connection: str = "peer") -> dict[str, dict[str, Any]]:
    return {
        c["name"]: c
        for sa in gw.sas()
        if sa["connection"] == connection and sa["state"] == "ESTABLISHED"
        for c in sa["children"]
        if c["state"] == "INSTALLED"
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; 0 when absent. Labels not given are summed over."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def verdicts(gw: Gateway, action: str, reason: str) -> int:
    rows = api(gw.socket, "stats")["xdp"]
    return sum(r["packets"] for r in rows if (r["action"], r["reason"]) == (action, reason))


def test_dataplane_promise_in_the_running_daemon(
    netns_pair: tuple[Netns, Netns], make_netns: NetnsFactory, tmp_path: Path
) -> None:
    a, b = netns_pair
    with socket_dir() as run_dir, netdevsim.device(a, "nsim0") as nsim:
        run(a, b, nsim, make_netns, tmp_path, run_dir)


def run(
    a: Netns,
    b: Netns,
    nsim: netdevsim.Netdevsim,
    make_netns: NetnsFactory,
    tmp_path: Path,
    run_dir: Path,
) -> None:
    started = time.monotonic()
    took: dict[str, float] = {}
    lan = make_netns("gwl")
    veth(a, "lan0", lan, "eth0")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "lan0")
    a.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for net in ("10.2.0.0/24", "10.3.0.0/24", "default"):  # routed first, then XFRM policy
        a.ip("route", "add", net, "via", EAST)
    a.ip("link", "set", "nsim0", "up")  # the offloaded Child's ESP leaves here
    a.ip("rule", "add", "fwmark", hex(MARK), "lookup", "100")
    a.ip("route", "add", f"{EAST}/32", "dev", "nsim0", "table", "100")
    lan.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.1.0.1")
    b.ip("addr", "add", "10.2.0.1/32", "dev", "lo")
    b.ip("route", "add", "10.1.0.0/24", "via", WEST)

    west_text, east_text = configs(run_dir)
    east = Gateway.start(b, tmp_path, "east", east_text)
    # west compiles the programs first: about a minute under emulation, minutes when busy
    west = Gateway.start(a, tmp_path, "west", west_text, wait=900)
    took["start"] = time.monotonic() - started
    try:
        kids = wait_for(
            "net and off installed", lambda: len(children(west)) == 2 and children(west), 180
        )
        offload(a, lan, west, nsim, kids)
        took["offload"] = time.monotonic() - started
        counters_steering_drop_and_rekey(a, b, lan, west, kids["net"])
        took["counters"] = time.monotonic() - started
        shield(a, b, west, east)
        took["shield"] = time.monotonic() - started
    finally:
        stopped = (west.stop(timeout=60), east.stop(timeout=60))
    assert stopped[0] == 0, west.log_text()
    assert "prog/xdp" not in a.ip("-d", "link", "show", "dev", "eth0").stdout
    for dev in ("eth0", "lan0"):
        assert "clsact" not in a.run("tc", "qdisc", "show", "dev", dev).stdout
        for hook in ("ingress", "egress"):
            assert a.run("tc", "filter", "show", "dev", dev, hook).stdout.strip() == ""
    assert "event=xdp-detached" in west.log_text()
    assert nsim.ipsec().sa_count == 0  # the offloaded SAs left the NIC with the daemon
    print("phases (s since start): " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()))


def offload(
    a: Netns, lan: Netns, west: Gateway, nsim: netdevsim.Netdevsim, kids: dict[str, Any]
) -> None:
    """crypto on netdevsim, auto falling back on the veth, crypto refused on the veth."""
    net, off = kids["net"], kids["off"]
    assert (off["offload"], off["offload_dev"], off["offload_reason"]) == ("crypto", "nsim0", "")
    assert (net["offload"], net["offload_dev"]) == ("none", "eth0")
    assert "eth0 has no IPsec offload" in net["offload_reason"], net
    assert off["cpu"] is None  # the NIC decrypts an offloaded SA: never steered
    before = nsim.ipsec()
    assert {s.spi for s in before.sas} == {int(off["spi_in"], 16), int(off["spi_out"], 16)}
    lan.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.3.0.1", check=False, timeout=60)
    assert nsim.ipsec().tx - before.tx == 3  # the simulated NIC sent each, offloaded
    samples = scrape_in(a, METRICS)
    info = {
        dict(lab)["child"]: dict(lab)["offload"]
        for (n, lab) in samples
        if n == "ipsec_child_sa_info"
    }
    assert info == {"net": "none", "off": "crypto"}, info
    assert value(samples, "ipsec_child_sa_offload_fallbacks_total", child="net") == 1
    assert value(samples, "ipsec_child_sa_offload_fallbacks_total", child="off") == 0
    fallback = [ln for ln in west.log_text().splitlines() if "event=child-offload-fallback" in ln]
    assert len(fallback) == 1, fallback
    assert "child=net " in fallback[0] and " device=eth0 " in fallback[0], fallback
    # crypto that the device refuses fails the Child SA: the device and the reason
    try:
        api(west.socket, "initiate", name="peer.bad", timeout=120)
    except AssertionError as exc:
        refused = str(exc)
    else:
        raise AssertionError("peer.bad came up without offload")
    assert "offload crypto on eth0" in refused and "no IPsec offload" in refused, refused
    assert "bad" not in children(west)
    # gateway doctor -i nsim0: the modes, and what the kernel grants a trial SA
    proc = a.run(
        sys.executable, "-m", "gateway", "doctor", "--no-compile", "--json",
        "-i", "nsim0", "--offload-trial", check=False, timeout=300,
    )  # fmt: skip
    check = {c["name"]: c for c in json.loads(proc.stdout)}["esp-offload[nsim0]"]
    assert check["status"] == "ok", check
    assert check["detail"].startswith("offload modes: no, auto, crypto;"), check
    assert "crypto granted" in check["detail"] and "packet refused" in check["detail"], check


def counters_steering_drop_and_rekey(
    a: Netns, b: Netns, lan: Netns, west: Gateway, net: dict[str, Any]
) -> None:
    """Per-SA counters from the XDP slot across a rekey and a delete; ESP steered to the
    Child's CPU; unknown SPIs dropped; MSS clamped."""
    assert net["xdp"]["slot"] == int(net["spi_in"], 16) & 0xFFFFF  # 20 slot bits
    cpu = net["cpu"]
    other = 1 - cpu
    assert cpu in (0, 1), net
    key = {"connection": "peer", "child": "net"}
    # MSS clamp: a SYN from the LAN host into the tunnel (east answers with a RST)
    lan.run("bash", "-c", "exec 3<>/dev/tcp/10.2.0.1/9", check=False, timeout=60)
    wait_for("the SYN clamped", lambda: api(west.socket, "stats")["mss_clamped"].get("lan0"), 30)
    time.sleep(2)  # east's RST back through the tunnel
    base = scrape_in(a, METRICS)
    assert value(base, "ipsec_mss_clamped_total", interface="lan0") >= 1

    def packets(samples: Samples, direction: str) -> float:
        return value(samples, "ipsec_child_sa_packets_total", direction=direction, **key)

    def ping(count: int) -> None:  # from the CPU that is not the Child's: XDP sees it there
        lan.run(
            "taskset", "-c", str(other), "ping", "-c", str(count), "-i", "0.2", "-W", "5",
            "10.2.0.1", timeout=120,
        )  # fmt: skip

    steered = api(west.socket, "stats")["xdp_steered"].get(str(cpu), 0)
    ping(10)
    after = scrape_in(a, METRICS)
    assert packets(after, "in") - packets(base, "in") == 10, (base, after)
    assert packets(after, "out") - packets(base, "out") == 10
    assert value(after, "ipsec_xdp_steered_packets_total", cpu=str(cpu)) - steered >= 10
    assert value(after, "ipsec_xdp_packets_total", action="redirect", reason="esp") >= 10
    assert value(after, "ipsec_xdp_slots", state="capacity") == 1 << 20
    assert value(after, "ipsec_xdp_slots", state="used") >= 2  # net and off

    # unknown SPIs: dropped at XDP, exactly these
    mac = mac_of(a, "eth0")
    frames = [
        esp_frame(mac, EAST, WEST, 0x10000 + secrets.randbelow(0xFFFE0000)) for _ in range(25)
    ]
    send_frames(b, "eth0", frames)
    wait_for("25 unknown SPIs dropped", lambda: verdicts(west, "drop", "esp_unknown_spi") == 25, 30)

    # rekey: new SPIs, the same slot; the counters carry on, nothing of the tunnel dropped
    api(west.socket, "rekey", name="peer.net", timeout=120)
    rekeyed = wait_for(
        "the rekeyed Child",
        lambda: (
            children(west).get("net", {}).get("spi_in") not in (None, net["spi_in"])
            and children(west)["net"]
        ),
        90,
    )
    assert rekeyed["xdp"]["slot"] == net["xdp"]["slot"] and rekeyed["cpu"] == cpu
    ping(10)
    again = scrape_in(a, METRICS)
    assert packets(again, "in") - packets(base, "in") == 20, (base, again)
    assert packets(again, "out") - packets(base, "out") == 20
    assert verdicts(west, "drop", "esp_unknown_spi") == 25  # the tunnel's ESP never dropped

    # the Child SA is deleted: its traffic stays in the series (final slot counts)
    api(west.socket, "terminate", name="peer.net", timeout=120)
    wait_for("net gone", lambda: "net" not in children(west), 60)
    gone = scrape_in(a, METRICS)
    assert packets(gone, "in") - packets(base, "in") == 20, (again, gone)
    assert packets(gone, "out") - packets(base, "out") == 20
    retired = api(west.socket, "stats")["retired"]["peer.net"]
    assert retired["packets_in"] == packets(gone, "in")


def shield(a: Netns, b: Netns, west: Gateway, east: Gateway) -> None:
    """An IKE_SA_INIT flood shed at XDP while a legitimate peer connects: bursts of 100
    from random sources (the budget: 20/s, bursts of 20) and 10 from one loud source
    (2/s per source) every second, as east initiates connection late."""
    mac = mac_of(a, "eth0")
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            frames = [
                ike_init_frame(
                    mac, f"198.18.{n // 250}.{n % 250 + 1}", WEST, secrets.token_bytes(8)
                )
                for n in (secrets.randbelow(60000) for _ in range(100))
            ]
            frames += [ike_init_frame(mac, "192.0.2.99", WEST, secrets.token_bytes(8))] * 10
            send_frames(b, "eth0", frames)
            stop.wait(1.0)

    over, limited = (
        verdicts(west, "drop", "ike_over_budget"),
        verdicts(west, "drop", "ike_rate_limited"),
    )
    sender = threading.Thread(target=flood, name="init-flood")
    sender.start()
    try:
        time.sleep(2)  # the flood is on before the peer starts
        api(east.socket, "initiate", name="late", timeout=240)
    finally:
        stop.set()
        sender.join(timeout=30)
    late = [s for s in east.sas() if s["connection"] == "late" and s["state"] == "ESTABLISHED"]
    assert late and late[0]["children"], east.sas()
    shed = verdicts(west, "drop", "ike_over_budget") - over
    assert shed >= 100, shed  # most of every burst
    assert verdicts(west, "drop", "ike_rate_limited") - limited >= 8  # the loud source
    samples = scrape_in(a, METRICS)
    assert (
        value(samples, "ipsec_xdp_packets_total", action="drop", reason="ike_over_budget") >= shed
    )
