"""The interop matrix over real kernel ESP (in the VM when the host kernel has none).

One topology, one test per peer: our daemon in `gw` (west) against strongSwan's charon
(kernel-netlink) or against a second copy of our daemon in `ge` (east):

    hw (10.1.N.10) -- gw ==== eth0: 192.0.2.1 <-> 192.0.2.2 (direct) ==== ge -- he (10.2.N.10)
                         \\== nat0 192.168.1.2 -- r (masquerade both ways) -- 192.168.2.2 ==/

Four connections run at once, each with its own subnet pair 10.1.N.0/24 === 10.2.N.0/24,
so one daemon start and one charon start check the whole matrix (MATRIX below): PSK,
ECDSA and RSA certificates from CAs the test makes; AES-GCM and ChaCha20-Poly1305 ESP;
x25519 and ecp256; west or east initiating; direct or through the NAT (UDP 4500). For
every connection: both kernels agree on the SPIs, the hosts behind the gateways ping
each other and move iperf3 bytes through the tunnel, and the captures on the wire between
the gateways show ESP with exactly our SPIs (UDP-encapsulated through the NAT, `encap`
in list-sas) and never the inner addresses. Then Child and IKE rekeys initiated by either
side under continuous pings lose no echo (our rekey responder keeps sending on the old SA
until the initiator's Delete), the old kernel states go; finally the peer is SIGKILLed
and our DPD removes every IKE SA, Child SA, XFRM state and policy.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.netns import Netns, veth
from tests.support.daemon import PSK, Gateway, api, socket_dir, wait_for
from tests.support.fixtures import NetnsFactory
from tests.support.pki import Issued, make_ca, make_leaf
from tests.support.strongswan import NETLINK_PLUGINS, StrongSwan

WEST_WAN, EAST_WAN = "192.0.2.1", "192.0.2.2"
WEST_NAT, EAST_NAT = "192.168.1.2", "192.168.2.2"  # behind the router r
R_WEST, R_EAST = "192.168.1.1", "192.168.2.1"  # r's addresses: what each side's NAT shows
# charon: the test routes the inner networks itself; and it waits for our answers as long
# as an emulated, busy VM may need (the helper's defaults give up after 6 s; later keys win)
CHARON_EXTRA = "  install_routes = no\n  retransmit_timeout = 4.0\n  retransmit_tries = 4\n"
NFT_NAT = """
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "e" ip saddr 192.168.1.0/24 masquerade
    oifname "w" ip saddr 192.168.2.0/24 masquerade
  }
}
"""


@dataclass(frozen=True, slots=True)
class Conn:
    name: str
    n: int  # subnets 10.1.n.0/24 (west) and 10.2.n.0/24 (east)
    auth: str  # psk, p256 (ECDSA certificates) or rsa (RSA certificates)
    ike: str
    esp: str
    initiator: str  # west (our daemon) or east (the peer)
    nat: bool  # through r: the initiator's address is masqueraded

    def addrs(self, side: str) -> tuple[str, str]:
        """(local, remote) IKE addresses as `side` sees them."""
        if not self.nat:
            return (WEST_WAN, EAST_WAN) if side == "west" else (EAST_WAN, WEST_WAN)
        if side == "west":  # east behind the NAT appears as r's west address
            return WEST_NAT, (EAST_NAT if self.initiator == "west" else R_WEST)
        return EAST_NAT, (WEST_NAT if self.initiator == "east" else R_EAST)

    def id(self, side: str) -> str:
        return f"{self.name}-{side}.example"

    def ts(self, side: str) -> tuple[str, str]:
        west, east = f"10.1.{self.n}.0/24", f"10.2.{self.n}.0/24"
        return (west, east) if side == "west" else (east, west)


MATRIX = (
    Conn("psk", 1, "psk", "aes256gcm16-prfsha384-x25519", "aes256gcm16", "west", False),
    Conn("ecdsa", 2, "p256", "aes128gcm16-prfsha256-ecp256", "chacha20poly1305", "east", False),
    Conn("rsa", 3, "rsa", "chacha20poly1305-prfsha256-x25519", "aes128gcm16", "west", True),
    Conn("natpsk", 4, "psk", "aes128-sha256-ecp256", "chacha20poly1305", "east", True),
)
# strongSwan's names for what it negotiated (vici list-sas)
SWAN_DH = {"x25519": "CURVE_25519", "ecp256": "ECP_256"}
SWAN_ESP = {"aes256gcm16": "AES_GCM_16", "aes128gcm16": "AES_GCM_16"}
SWAN_ESP["chacha20poly1305"] = "CHACHA20_POLY1305"


@dataclass
class Topology:
    hw: Netns
    gw: Netns
    r: Netns
    ge: Netns
    he: Netns


def batch(ns: Netns, *lines: str) -> None:
    ns.run("ip", "-batch", "-", input="\n".join(lines) + "\n")


def build(make_netns: NetnsFactory) -> Topology:
    t = Topology(*(make_netns(p) for p in ("ihw", "igw", "ir", "ige", "ihe")))
    veth(t.hw, "eth0", t.gw, "lan0", mtu=1400)  # inner MTU that fits ESP on a 1500 wire
    veth(t.gw, "eth0", t.ge, "eth0")
    veth(t.gw, "nat0", t.r, "w")
    veth(t.r, "e", t.ge, "nat0")
    veth(t.ge, "lan0", t.he, "eth0", mtu=1400)
    for host, gw, side, peer_nat in ((t.hw, t.gw, 1, R_WEST), (t.he, t.ge, 2, R_EAST)):
        other = 3 - side
        wan, peer_wan = (WEST_WAN, EAST_WAN) if side == 1 else (EAST_WAN, WEST_WAN)
        nat = WEST_NAT if side == 1 else EAST_NAT
        batch(
            host,
            *(f"addr add 10.{side}.{c.n}.10/24 dev eth0" for c in MATRIX),
            f"route add default via 10.{side}.1.1",
        )
        batch(
            gw,
            *(f"addr add 10.{side}.{c.n}.1/24 dev lan0" for c in MATRIX),
            f"addr add {wan}/24 dev eth0",
            f"addr add {nat}/24 dev nat0",
            f"route add 192.168.{other}.0/24 via {peer_nat}",
            # the inner route follows the outer path (policy lookup needs a route)
            *(
                f"route add 10.{other}.{c.n}.0/24 via {peer_nat if c.nat else peer_wan}"
                for c in MATRIX
            ),
        )
        gw.run(
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            *(
                f"net.ipv4.conf.{dev}.rp_filter=0"
                for dev in ("all", "default", "eth0", "nat0", "lan0")
            ),
        )
    batch(t.r, f"addr add {R_WEST}/24 dev w", f"addr add {R_EAST}/24 dev e")
    t.r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    t.r.run("nft", "-f", "-", input=NFT_NAT)
    return t


# ---------------------------------------------------------------------- credentials


class Pki:
    """An ECDSA root and an RSA root; a leaf per side for the certificate connections."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        dates: dict[str, Any] = {
            "not_before": now - datetime.timedelta(days=1),
            "not_after": now + datetime.timedelta(days=30),
        }
        self.ca = {
            "p256": make_ca("Interop ECDSA Root", "p256", **dates),
            "rsa": make_ca("Interop RSA Root", "rsa", **dates),
        }
        self.leaf: dict[tuple[str, str], Issued] = {}
        for c in MATRIX:
            if c.auth != "psk":
                for side in ("west", "east"):
                    self.leaf[c.name, side] = make_leaf(
                        self.ca[c.auth], c.id(side), c.auth, dns=(c.id(side),), **dates
                    )

    def write_ours(self, d: Path, side: str) -> None:
        for kind, ca in self.ca.items():
            (d / f"ca-{kind}.pem").write_bytes(ca.pem)
        for (name, s), leaf in self.leaf.items():
            if s == side:
                (d / f"{side}-{name}.pem").write_bytes(leaf.pem)
                key = d / f"{side}-{name}.key"
                key.write_bytes(leaf.key_pem)
                key.chmod(0o600)

    def write_swan(self, d: Path) -> None:
        """Where swanctl --load-all finds them: x509/, x509ca/, ecdsa/ or rsa/."""
        for sub in ("x509", "x509ca", "ecdsa", "rsa"):
            (d / sub).mkdir(mode=0o700, exist_ok=True)
        for kind, ca in self.ca.items():
            (d / "x509ca" / f"ca-{kind}.pem").write_bytes(ca.pem)
        for (name, side), leaf in self.leaf.items():
            if side != "east":
                continue
            (d / "x509" / f"east-{name}.pem").write_bytes(leaf.pem)
            sub = "rsa" if isinstance(leaf.key, rsa.RSAPrivateKey) else "ecdsa"
            key = d / sub / f"east-{name}.key"
            key.write_bytes(
                leaf.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
            key.chmod(0o600)


# ---------------------------------------------------------------------- configs


def our_config(side: str, sock: Path, creds: Path) -> str:
    local_addrs = sorted({c.addrs(side)[0] for c in MATRIX})
    lines = [
        "[gateway]",
        f"listen = {json.dumps(local_addrs)}",
        f'control_socket = "{sock}"',
        'metrics_listen = "off"',
        'dataplane = "xfrm"',
        # an exchange (DPD too) is given up after 2 + 3.6 + 6.5 + 11.7 s without an answer
        'retransmit_timeout = "2s"',
        "retransmit_tries = 3",
    ]
    for c in MATRIX:
        local, remote = c.addrs(side)
        peer = "east" if side == "west" else "west"
        if c.auth == "psk":
            me = f'{{ auth = "psk", id = "{c.id(side)}" }}'
            them = f'{{ auth = "psk", id = "{c.id(peer)}" }}'
        else:
            me = (
                f'{{ auth = "pubkey", id = "{c.id(side)}", certs = ["{creds}/{side}-{c.name}.pem"]'
                f', key = "{creds}/{side}-{c.name}.key" }}'
            )
            them = (
                f'{{ auth = "pubkey", id = "{c.id(peer)}", cacerts = ["{creds}/ca-{c.auth}.pem"] }}'
            )
        local_ts, remote_ts = c.ts(side)
        lines += [
            f"[connections.{c.name}]",
            f'local_addrs = ["{local}"]',
            f'remote_addrs = ["{remote}"]',
            f'ike_proposals = ["{c.ike}"]',
            f"local = {me}",
            f"remote = {them}",
            *([f'psk = "{PSK}"'] if c.auth == "psk" else []),
            'dpd_delay = "3s"',
            f"[connections.{c.name}.children.net]",
            f'local_ts = ["{local_ts}"]',
            f'remote_ts = ["{remote_ts}"]',
            f'esp_proposals = ["{c.esp}"]',
            'start_action = "none"',
        ]
    return "\n".join(lines) + "\n"


def swan_config() -> str:
    conns, secrets = [], []
    for c in MATRIX:
        local, remote = c.addrs("east")
        local_ts, remote_ts = c.ts("east")
        auth = "psk" if c.auth == "psk" else "pubkey"
        certs = "" if c.auth == "psk" else f"\n      certs = east-{c.name}.pem"
        conns.append(f"""  {c.name} {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = {c.ike}
    local {{
      auth = {auth}
      id = {c.id("east")}{certs}
    }}
    remote {{
      auth = {auth}
      id = {c.id("west")}
    }}
    children {{
      {c.name}-net {{
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = {c.esp}
        start_action = none
      }}
    }}
  }}""")
        if c.auth == "psk":
            secrets.append(f"""  ike-{c.name} {{
    id-a = {c.id("west")}
    id-b = {c.id("east")}
    secret = "{PSK}"
  }}""")
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


# ---------------------------------------------------------------------- the peers


class Peer(Protocol):
    def initiate(self, c: Conn) -> None: ...
    def rekey(self, c: Conn, *, ike: bool) -> None: ...
    def spis(self, c: Conn) -> tuple[int, int] | None: ...  # (in, out) of its one Child
    def proposals(self, c: Conn) -> tuple[str, str] | None: ...  # (DH group, ESP encr)
    def kill(self) -> None: ...


class SwanPeer:
    def __init__(self, sw: StrongSwan) -> None:
        self.sw = sw

    def initiate(self, c: Conn) -> None:
        self.sw.initiate(f"{c.name}-net", ike=c.name, timeout=120)

    def rekey(self, c: Conn, *, ike: bool) -> None:  # vici's rekey only queues it
        self.sw.swanctl("--rekey", *(("--ike", c.name) if ike else ("--child", f"{c.name}-net")))

    def _sa(self, c: Conn) -> tuple[dict[str, Any], dict[str, Any]] | None:
        sas = [s for s in self.sw.list_sas() if s["name"] == c.name]
        if len(sas) != 1 or sas[0]["state"] != "ESTABLISHED":
            return None
        kids = [k for k in sas[0].get("child-sas", {}).values() if k["state"] == "INSTALLED"]
        return (sas[0], kids[0]) if len(kids) == 1 else None

    def spis(self, c: Conn) -> tuple[int, int] | None:
        sa = self._sa(c)
        return None if sa is None else (int(sa[1]["spi-in"], 16), int(sa[1]["spi-out"], 16))

    def proposals(self, c: Conn) -> tuple[str, str] | None:
        sa = self._sa(c)
        return None if sa is None else (sa[0]["dh-group"], sa[1]["encr-alg"])

    def kill(self) -> None:
        self.sw.kill()


class OurPeer:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def initiate(self, c: Conn) -> None:
        api(self.gw.socket, "initiate", name=f"{c.name}.net", timeout=120)

    def rekey(self, c: Conn, *, ike: bool) -> None:
        api(self.gw.socket, "rekey", name=c.name if ike else f"{c.name}.net", timeout=120)

    def spis(self, c: Conn) -> tuple[int, int] | None:
        child = installed_child(self.gw, c)
        return None if child is None else (int(child["spi_in"], 16), int(child["spi_out"], 16))

    def proposals(self, c: Conn) -> tuple[str, str] | None:
        sa = one_sa(self.gw, c)
        child = installed_child(self.gw, c)
        if sa is None or child is None:
            return None
        return sa["ike_proposal"].rsplit("-", 1)[1], child["esp_proposal"]

    def kill(self) -> None:
        self.gw.proc.kill()  # SIGKILL by pid: no Delete reaches west
        self.gw.proc.wait(30)


# ---------------------------------------------------------------------- observations


def one_sa(gw: Gateway, c: Conn) -> dict[str, Any] | None:
    sas = [s for s in gw.sas() if s["connection"] == c.name and s["state"] == "ESTABLISHED"]
    return sas[0] if len(sas) == 1 else None


def installed_child(gw: Gateway, c: Conn) -> dict[str, Any] | None:
    sa = one_sa(gw, c)
    kids = [k for k in (sa or {}).get("children", []) if k["state"] == "INSTALLED"]
    return kids[0] if len(kids) == 1 else None


def states(ns: Netns) -> set[int]:
    out = ns.run("ip", "xfrm", "state").stdout
    return {int(s, 16) for s in re.findall(r"spi (0x[0-9a-f]+)", out)}


def policies(ns: Netns) -> int:
    return len(re.findall(r"^src ", ns.run("ip", "xfrm", "policy").stdout, re.M))


class Capture:
    """tcpdump on one interface of a namespace, into a pcap on a VM-local path."""

    def __init__(self, ns: Netns, dev: str, path: Path, *, out_only: bool) -> None:
        self.path, self.err = path, path.with_suffix(".err")
        with open(self.err, "wb") as err:
            self.proc = ns.popen(
                "tcpdump",
                "-i",
                dev,
                *(("-Q", "out") if out_only else ()),
                "-nn",
                "-U",
                "-s",
                "128",
                "-Z",
                "root",
                "-w",
                str(path),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.ns, self.dev = ns, dev

    def ready(self) -> None:
        wait_for(
            f"tcpdump on {self.dev}",
            lambda: "listening on" in self.err.read_text() or self.proc.poll() is not None,
            timeout=60,
        )
        assert self.proc.poll() is None, self.err.read_text()

    def stop(self) -> list[str]:
        self.ns.stop(self.proc)
        return subprocess.run(
            ["tcpdump", "-Z", "root", "-r", str(self.path), "-nn"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()


def esp_spis(lines: list[str], *, encap: bool) -> dict[int, int]:
    """ESP packets per SPI in a capture, only UDP-encapsulated (encap) or only plain."""
    count: dict[int, int] = {}
    for line in lines:
        m = re.search(r"ESP\(spi=0x([0-9a-f]+),", line)
        if m and ("UDP-encap" in line) is encap:
            spi = int(m.group(1), 16)
            count[spi] = count.get(spi, 0) + 1
    return count


def ping_all(host: Netns, src: str, dst: str) -> None:
    out = host.run("ping", "-c", "3", "-i", "0.3", "-W", "5", "-I", src, dst, timeout=120).stdout
    assert " 3 received" in out, out


def iperf(host: Netns, src: str, dst: str) -> int:
    """A 2 s TCP run through the tunnel; the bytes the server received."""
    proc = host.run("iperf3", "-c", dst, "-B", src, "-t", "2", "-J", timeout=180, check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and "error" not in result, proc.stdout[-2000:]
    received = int(result["end"]["sum_received"]["bytes"])
    assert received > 0 and result["end"]["sum_sent"]["bytes"] > 0, result["end"]
    return received


class Pinger:
    """A continuous ping (5/s) whose lost echoes are the gaps in the answered sequence.
    It runs for at least MIN_ECHOES intervals, however fast the rekeys went."""

    MIN_ECHOES = 20

    def __init__(self, host: Netns, src: str, dst: str) -> None:
        self.started = time.monotonic()
        self.proc = host.popen(
            "ping",
            "-i",
            "0.2",
            "-W",
            "5",
            "-I",
            src,
            dst,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def lost(self) -> tuple[list[int], int, str]:
        time.sleep(max(0.0, self.started + 0.2 * (self.MIN_ECHOES + 3) - time.monotonic()))
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=30)[0].decode()
        seqs = {int(s) for s in re.findall(r"icmp_seq=(\d+) ttl=", out)}
        top = max(seqs, default=0)
        return sorted(set(range(1, top + 1)) - seqs), top, out


# ---------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def pki() -> Pki:
    """Made once for both tests (RSA keys take seconds under the VM's emulation)."""
    return Pki()


def start_both(west: Callable[[], Gateway], east: Callable[[], Any]) -> tuple[Gateway, Any]:
    """Start our daemon and its peer at the same time: under emulation each start takes
    a minute or more, mostly Python imports and key loading."""
    with ThreadPoolExecutor(2) as pool:
        w, e = pool.submit(west), pool.submit(east)
        try:
            return w.result(), e.result()
        except BaseException:
            for f in (w, e):  # whatever did start is stopped by the namespaces' fixture
                f.exception()
            raise


@pytest.fixture
def run_dir(make_netns: NetnsFactory) -> Iterator[Path]:
    """VM-local files (sockets, keys, captures); removed after the namespaces' processes."""
    with socket_dir() as path:
        yield path


def check_matrix(
    t: Topology, west: Gateway, peer: Peer, run_dir: Path, record: Callable[[str], None]
) -> None:
    # establish: each connection from its own initiator
    for c in MATRIX:
        if c.initiator == "west":
            api(west.socket, "initiate", name=f"{c.name}.net", timeout=120)
        else:
            peer.initiate(c)
    record("established")
    ours: dict[str, dict[str, Any]] = {}
    for c in MATRIX:
        (sa,) = west.installed(c.name)
        (child,) = sa["children"]
        ours[c.name] = child
        assert sa["initiator"] is (c.initiator == "west"), sa
        assert (sa["local_id"], sa["remote_id"]) == (c.id("west"), c.id("east")), sa
        assert sa["ike_proposal"].endswith(c.ike.rsplit("-", 1)[1]), sa
        assert child["esp_proposal"] == c.esp and child["encap"] is c.nat, child
        spi_in, spi_out = int(child["spi_in"], 16), int(child["spi_out"], 16)
        # the peer's kernel/daemon holds the mirror image
        wait_for(f"{c.name} at the peer", partial(mirrors, peer, c, (spi_out, spi_in)))
        dh, esp = peer.proposals(c) or ("", "")
        assert dh in (c.ike.rsplit("-", 1)[1], SWAN_DH[c.ike.rsplit("-", 1)[1]]), dh
        assert esp in (c.esp, SWAN_ESP[c.esp]), esp
    spis = {int(ch[k], 16) for ch in ours.values() for k in ("spi_in", "spi_out")}
    assert states(t.gw) == spis
    assert policies(t.gw) == 3 * len(MATRIX)  # out, in, fwd per Child

    # traffic between the hosts, captured on the wire between the gateways
    caps = {
        "gw": Capture(t.gw, "eth0", run_dir / "gw.pcap", out_only=True),
        "ge": Capture(t.ge, "eth0", run_dir / "ge.pcap", out_only=True),
        "r": Capture(t.r, "w", run_dir / "r.pcap", out_only=False),
    }
    for cap in caps.values():  # started together, each start is slow under emulation
        cap.ready()
    server = t.he.popen("iperf3", "-s", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("iperf3 server", lambda: ":5201" in t.he.run("ss", "-ltnH").stdout)
    moved = {}
    for c in MATRIX:
        src, dst = f"10.1.{c.n}.10", f"10.2.{c.n}.10"
        ping_all(t.hw, src, dst)
        moved[c.name] = iperf(t.hw, src, dst)
    t.he.stop(server)
    wire = {name: cap.stop() for name, cap in caps.items()}
    record("traffic")
    for c in MATRIX:
        child = installed_child(west, c)
        assert child is not None
        assert child["bytes_out"] > moved[c.name] and child["packets_in"] >= 3, child
        spi_in, spi_out = int(child["spi_in"], 16), int(child["spi_out"], 16)
        if c.nat:  # through r, both directions, in UDP 4500
            seen = esp_spis(wire["r"], encap=True)
            assert seen.get(spi_out, 0) >= 3 and seen.get(spi_in, 0) >= 3, (c, seen)
        else:
            assert esp_spis(wire["gw"], encap=False).get(spi_out, 0) >= 3, c
            assert esp_spis(wire["ge"], encap=False).get(spi_in, 0) >= 3, c
    for name, lines in wire.items():
        assert not esp_spis(lines, encap=False).keys() - spis, name
        assert not esp_spis(lines, encap=True).keys() - spis, name
        leaks = [ln for ln in lines if re.search(r"\b10\.[12]\.\d+\.\d+", ln)]
        assert not leaks, (name, leaks[:5])  # the inner hosts never appear in clear
    # no plain ESP through the NAT, no encapsulated ESP on the direct link
    assert not esp_spis(wire["r"], encap=False) and not esp_spis(wire["gw"], encap=True)

    # rekeys under continuous traffic, initiated by either side: none may lose an echo
    direct, natted = MATRIX[0], MATRIX[2]
    pingers = {c.name: Pinger(t.hw, f"10.1.{c.n}.10", f"10.2.{c.n}.10") for c in (direct, natted)}
    steps: list[tuple[str, Conn, bool]] = [
        ("west", direct, False),
        ("east", direct, False),
        ("west", direct, True),
        ("east", direct, True),
        ("east", natted, False),
    ]
    for who, c, ike in steps:
        before = spi_state(west, c)
        assert before is not None
        if who == "west":
            api(west.socket, "rekey", name=c.name if ike else f"{c.name}.net", timeout=120)
        else:
            peer.rekey(c, ike=ike)
        # an IKE rekey changes the IKE SPIs and keeps the Child SA; a Child rekey the reverse
        after = wait_for(
            f"{who}'s rekey of {c.name} ({'IKE' if ike else 'Child'})",
            partial(_rekeyed, west, c, before, ike),
            120,
        )
        mirror = (after[3], after[2])
        wait_for(f"{c.name} rekeyed at the peer", partial(mirrors, peer, c, mirror))
    record("rekeys")
    current = {
        int(ch[k], 16)
        for c in MATRIX
        for ch in [installed_child(west, c)]
        if ch is not None
        for k in ("spi_in", "spi_out")
    }
    wait_for("retired inbound SAs removed", lambda: states(t.gw) == current, 30)
    time.sleep(1)  # the last echoes answered
    for name, pinger in pingers.items():
        lost, sent, out = pinger.lost()
        assert sent >= Pinger.MIN_ECHOES and not lost, (name, f"lost {lost} of {sent}", out)
    stats = api(west.socket, "stats")
    assert stats["rekeys"] >= 3

    # the peer dies without a word: DPD removes every SA of ours and the kernel's objects
    peer.kill()
    wait_for("DPD removed every IKE SA", lambda: west.sas() == [], 120)
    wait_for("kernel states and policies gone", lambda: not states(t.gw) and not policies(t.gw))
    assert api(west.socket, "stats")["dpd_failures"] == len(MATRIX)
    log = west.log_text()
    for c in MATRIX:
        assert f"event=dpd-failed connection={c.name} " in log, c
    record("dpd")


def spi_state(gw: Gateway, c: Conn) -> tuple[str, str, int, int] | None:
    """(IKE spi_i, spi_r, Child spi_in, spi_out) of the connection's one SA pair."""
    sa, child = one_sa(gw, c), installed_child(gw, c)
    if sa is None or child is None:
        return None
    return sa["spi_i"], sa["spi_r"], int(child["spi_in"], 16), int(child["spi_out"], 16)


def _rekeyed(
    gw: Gateway, c: Conn, before: tuple[str, str, int, int], ike: bool
) -> tuple[str, str, int, int] | None:
    now = spi_state(gw, c)
    if now is None:
        return None
    ike_changed, child_changed = now[:2] != before[:2], now[2:] != before[2:]
    return now if (ike_changed, child_changed) == (ike, not ike) else None


def mirrors(peer: Peer, c: Conn, spis: tuple[int, int]) -> bool:
    """The peer's Child SA of `c` has our SPIs the other way round."""
    return peer.spis(c) == spis


class Timer:
    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.marks: list[str] = []

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        self.marks.append(f"{what} {now - self.last:.1f}s")
        self.last = now

    def report(self) -> str:
        return f"total {time.monotonic() - self.start:.1f}s: " + ", ".join(self.marks)


def prepare(
    make_netns: NetnsFactory, run_dir: Path, pki: Pki, *sides: str
) -> tuple[Timer, Topology, Path]:
    """The topology, and the credentials of our daemon(s) in run_dir/creds."""
    timer = Timer()
    t = build(make_netns)
    creds = run_dir / "creds"
    creds.mkdir(mode=0o700)
    for side in sides:
        pki.write_ours(creds, side)
    timer("setup")
    return timer, t, creds


def test_interop_with_strongswan(
    make_netns: NetnsFactory, tmp_path: Path, run_dir: Path, pki: Pki
) -> None:
    timer, t, creds = prepare(make_netns, run_dir, pki, "west")
    (run_dir / "swan").mkdir()  # its vici socket must be on a VM-local file system too
    with StrongSwan(
        t.ge, plugins=NETLINK_PLUGINS, workdir=run_dir / "swan", extra_charon=CHARON_EXTRA
    ) as sw:
        pki.write_swan(sw.dir)
        sw.write_config(swan_config())

        def start_swan() -> None:
            # TCG: everything is ~30x slower than on the host, more on a busy machine
            sw.start(timeout=600)
            sw.swanctl("--load-all", "--file", str(sw.dir / "swanctl.conf"), timeout=600)

        west, _ = start_both(
            lambda: Gateway.start(
                t.gw, tmp_path, "west", our_config("west", run_dir / "w.sock", creds)
            ),
            start_swan,
        )
        timer("started")
        try:
            check_matrix(t, west, SwanPeer(sw), run_dir, timer)
        except AssertionError as exc:
            charon = "\n".join(ln for ln in sw.logs().splitlines() if "[CFG]" not in ln)
            exc.add_note(f"{timer.report()}\n--- charon ---\n{charon[-8000:]}")
            exc.add_note(f"--- west ---\n{west.log_text()[-6000:]}")
            raise
        finally:
            code = west.stop(60)
    assert code == 0
    (tmp_path / "timing.txt").write_text(timer.report() + "\n")


def test_interop_with_our_daemon(
    make_netns: NetnsFactory, tmp_path: Path, run_dir: Path, pki: Pki
) -> None:
    timer, t, creds = prepare(make_netns, run_dir, pki, "west", "east")
    west, east = start_both(
        lambda: Gateway.start(
            t.gw, tmp_path, "west", our_config("west", run_dir / "w.sock", creds)
        ),
        lambda: Gateway.start(
            t.ge, tmp_path, "east", our_config("east", run_dir / "e.sock", creds)
        ),
    )
    timer("started")
    try:
        check_matrix(t, west, OurPeer(east), run_dir, timer)
    except AssertionError as exc:
        exc.add_note(f"{timer.report()}\n--- east ---\n{east.log_text()[-6000:]}")
        exc.add_note(f"--- west ---\n{west.log_text()[-6000:]}")
        raise
    finally:
        code = west.stop(60)
        east.stop(10)
    assert code == 0
    (tmp_path / "timing.txt").write_text(timer.report() + "\n")
