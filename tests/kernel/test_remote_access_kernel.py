"""A strongSwan road warrior through our gateway over real kernel ESP (in the VM when the
host kernel has none). One topology, one daemon start, one charon start:

    client (charon) == 192.0.2.2 <-> 192.0.2.1 == gw (our daemon) -- lan (10.1.0.10)

The client authenticates with EAP-MSCHAPv2 against our users file and asks for a virtual
IP: it gets one of our pool (and the DNS server, which strongSwan's resolve plugin
writes down), pings the host behind the gateway from that address through kernel ESP
(both kernels count the packets), then reauthenticates make-before-break
(`swanctl --rekey --reauth`, strongSwan's make_before_break) under a numbered UDP echo
stream from its address to the host behind us: not one datagram lost, the same address
kept, the old SAs gone from both kernels. Its delete releases the lease; SIGTERM leaves
no XFRM state or policy behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.netns import Netns, veth
from tests.support.daemon import REPO, Gateway, api, wait_for
from tests.support.fixtures import NetnsFactory
from tests.support.kernel import policies, states
from tests.support.strongswan import EAP_PLUGINS, NETLINK_PLUGINS, RoadWarrior, StrongSwan

GW, CLIENT, LAN_HOST = "192.0.2.1", "192.0.2.2", "10.1.0.10"
GW_ID, PSK, PASSWORD = "vpn.example", "rw-gateway-psk-0123456789", "alice-Passw0rd-1"
# strongSwan: make-before-break reauthentication, and patience with an emulated VM
CHARON_EXTRA = "  make_before_break = yes\n  retransmit_timeout = 4.0\n  retransmit_tries = 4\n"


def gateway_toml(sock: Path, users: Path) -> str:
    return f"""
[gateway]
listen = ["{GW}"]
control_socket = "{sock}"
metrics_listen = "off"
dataplane = "xfrm"
eap_secrets = "{users}"

[pools.rw]
addrs = "10.3.0.0/24"
dns = ["10.3.0.53"]

[connections.rw]
local_addrs = ["{GW}"]
pools = ["rw"]
psk = "{PSK}"
local = {{ auth = "psk", id = "{GW_ID}" }}
remote = {{ auth = "eap-mschapv2" }}
[connections.rw.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["dynamic"]
"""


def build(make_netns: NetnsFactory) -> tuple[Netns, Netns, Netns]:
    client, gw, lan = make_netns("rwc"), make_netns("rwg"), make_netns("rwl")
    veth(client, "eth0", gw, "eth0")
    veth(gw, "lan0", lan, "eth0", mtu=1400)
    client.ip("addr", "add", f"{CLIENT}/24", "dev", "eth0")
    gw.ip("addr", "add", f"{GW}/24", "dev", "eth0")
    gw.ip("addr", "add", "10.1.0.1/24", "dev", "lan0")
    # the virtual IPs live behind the WAN (the policy lookup needs a route for them)
    gw.ip("route", "add", "10.3.0.0/24", "dev", "eth0")
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    lan.ip("addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.1.0.1")
    return client, gw, lan


def stream(client: Netns, lan: Netns, src: str) -> tuple[subprocess.Popen[bytes], ...]:
    """A numbered UDP echo stream, 50 datagrams/s, from `src` to the host behind us."""
    module = ("-m", "tests.support.udp_stream")
    echo = lan.popen(
        sys.executable, *module, "echo", LAN_HOST, "7777", stdout=subprocess.PIPE, cwd=str(REPO)
    )
    assert echo.stdout is not None and echo.stdout.readline() == b"ready\n"
    send = client.popen(
        sys.executable,
        *module,
        "send",
        src,
        LAN_HOST,
        "7777",
        "0.02",
        stdout=subprocess.PIPE,
        cwd=str(REPO),
    )
    assert send.stdout is not None and send.stdout.readline() == b"ready\n"
    return echo, send


def test_road_warrior_over_kernel_esp(
    make_netns: NetnsFactory, tmp_path: Path, run_dir: Path
) -> None:
    client, gw_ns, lan = build(make_netns)
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 1)
        mark = now

    users = tmp_path / "users.toml"
    users.write_text(f'[secrets.eap-alice]\nid = "alice"\nsecret = "{PASSWORD}"\n')
    users.chmod(0o600)
    gw = Gateway.launch(gw_ns, tmp_path, "gw", gateway_toml(run_dir / "gw.sock", users))
    sw = StrongSwan(client, plugins=f"{NETLINK_PLUGINS} {EAP_PLUGINS}", extra_charon=CHARON_EXTRA)
    rw = RoadWarrior(
        GW, GW_ID, "alice", password=PASSWORD, gateway_psk=PSK, remote_ts="10.1.0.0/16"
    )
    try:
        # charon starts while our daemon does (an emulated VM is slow: generous timeouts)
        sw.write_config(rw.swanctl())
        sw.start(timeout=180)
        sw.swanctl("--load-all", "--file", str(sw.dir / "swanctl.conf"), timeout=180)
        gw.ready()
        phase("start")

        # 1. EAP-MSCHAPv2, a virtual IP of our pool, the DNS server
        sw.initiate("net", "rw", timeout=120)
        (sa,) = gw.installed("rw")
        vip = sa["virtual_ips"][0]
        assert vip.startswith("10.3.0.") and sa["eap_identity"] == "alice"
        (swan,) = sw.list_sas()
        assert swan["local-vips"] == [vip]
        assert "nameserver 10.3.0.53" in sw.resolv_conf.read_text()
        assert sa["children"][0]["remote_ts"] == [f"{vip}/32"]
        phase("connect")

        # 2. from the virtual IP to the host behind the gateway, through kernel ESP
        client.run("ping", "-c", "3", "-W", "5", "-I", vip, LAN_HOST, timeout=120)
        (sa,) = gw.installed("rw")
        child = sa["children"][0]
        assert child["packets_in"] >= 3 and child["packets_out"] >= 3, child
        assert len(states(gw_ns)) == 2 and len(states(client)) == 2
        phase("ping")

        # 3. reauthentication, make-before-break, under a numbered UDP stream
        echo, sender = stream(client, lan, vip)
        time.sleep(2)  # traffic before
        sw.swanctl("--rekey", "--ike", "rw", "--reauth")
        wait_for("the reauthenticated SA", lambda: api(gw.socket, "stats")["reauths"] == 1, 180)
        wait_for(
            "the old SA gone",
            lambda: len(gw.sas()) == 1 and len(states(gw_ns)) == 2 and len(sw.list_sas()) == 1,
            120,
        )
        time.sleep(2)  # traffic after
        sender.send_signal(signal.SIGINT)
        result = json.loads(sender.communicate(timeout=60)[0].decode().strip())
        lan.stop(echo)
        assert result["sent"] >= 100 and result["echoed"] == result["sent"], result
        (again,) = gw.installed("rw")
        assert again["ike_sa"] != sa["ike_sa"] and again["virtual_ips"] == [vip]
        assert again["children"][0]["spi_in"] != child["spi_in"]
        assert "event=child-outbound-switched" in gw.log_text()
        assert api(gw.socket, "stats")["pools"]["rw"]["online"] == 1
        phase("reauth")

        # 4. the client goes: its lease is released, its SAs leave the kernel
        sw.terminate_ike("rw")
        wait_for(
            "the lease released", lambda: api(gw.socket, "stats")["pools"]["rw"]["online"] == 0
        )
        assert api(gw.socket, "stats")["pools"]["rw"]["offline"] == 1
        wait_for("our states gone", lambda: states(gw_ns) == [], 60)
        assert policies(gw_ns) == 0
        phase("delete")
    finally:
        sw.close()
        code = gw.stop(60)
    assert code == 0
    assert states(gw_ns) == [] and policies(gw_ns) == 0
    assert PASSWORD not in gw.log_text() and PSK not in gw.log_text()
    print(f"phases (s): {phases}")
