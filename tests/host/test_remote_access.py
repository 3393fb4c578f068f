"""Road warriors against our daemon (`gateway run`, data plane `none`) in namespaces:
strongSwan clients (charon with eap-identity, eap-mschapv2, eap-tls, resolve; kernel-
libipsec) authenticating with EAP-MSCHAPv2 from our users file and EAP-TLS against our
CA, and through FreeRADIUS (EAP-MSCHAPv2 and EAP-TLS at the server); each gets a virtual
IP from our pool (or RADIUS's Framed-IP-Address) and the DNS servers; list-sas, stats and
/metrics show the leases; a delete releases them; IPv6 virtual IPs too (`vips = ::`, and
both families at once from two pools); a wrong password is refused with
AUTHENTICATION_FAILED, counted, and logged without the password. Then 100 of our own
EAP clients at once against a gateway of two workers: 100 distinct addresses.

ESP itself is the VM's (tests/kernel/test_remote_access_kernel.py): the host kernel has none.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.netns import Netns
from tests.support.daemon import Gateway, api, ctl, ns_get, wait_for
from tests.support.freeradius import Config, TlsFiles, freeradius
from tests.support.pki import make_ca, make_leaf
from tests.support.strongswan import (
    EAP_PLUGINS,
    LIBIPSEC_PLUGINS,
    RoadWarrior,
    StrongSwan,
    install_creds,
)

GW, CLIENT = "192.0.2.1", "192.0.2.2"
GW_ID = "vpn.example"  # the certificate's; the PSK connection is PSK_ID (IDr picks it)
PSK_ID = "vpn-psk.example"
PSK = "rw-gateway-psk-0123456789"
ALICE_PW, BOB_PW = "alice-Passw0rd-1", "bob-Passw0rd-22"
WRONG_PW = "not-bobs-password-333"
RADIUS_SECRET = "radius-shared-secret-4444"
METRICS = "127.0.0.1:9811"
SWAN_PLUGINS = f"{LIBIPSEC_PLUGINS} {EAP_PLUGINS}"


class Pki:
    """Our gateway's certificate (also FreeRADIUS's, so strongSwan's EAP-TLS check of the
    server names the gateway's identity), two client certificates, one CA."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        dates: dict[str, Any] = {
            "not_before": now - datetime.timedelta(days=1),
            "not_after": now + datetime.timedelta(days=30),
        }
        self.ca = make_ca("Remote Access CA", **dates)
        self.gw = make_leaf(self.ca, GW_ID, dns=(GW_ID,), **dates)
        self.carol = make_leaf(self.ca, "carol", emails=("carol@example.org",), **dates)
        self.dave = make_leaf(self.ca, "dave", emails=("dave@example.org",), **dates)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def users_file(path: Path, users: dict[str, str]) -> Path:
    path.write_text(
        "".join(f'[secrets.eap-{u}]\nid = "{u}"\nsecret = "{pw}"\n' for u, pw in users.items())
    )
    path.chmod(0o600)
    return path


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def mschap_connection(
    name: str, gateway_id: str, pools: str = '["rw"]', local_ts: str = '["10.1.0.0/16"]'
) -> str:
    """A road-warrior connection: EAP-MSCHAPv2 clients, addresses from `pools`."""
    return f"""
[connections.{name}]
local_addrs = ["{GW}"]
pools = {pools}
psk = "{PSK}"
local = {{ auth = "psk", id = "{gateway_id}" }}
remote = {{ auth = "eap-mschapv2" }}
[connections.{name}.children.net]
local_ts = {local_ts}
"""


def gateway_section(sock: Path, users: Path) -> str:
    """[gateway]: our daemon on GW without a data plane, /metrics on METRICS, `users`."""
    return f"""
[gateway]
listen = ["{GW}"]
control_socket = "{sock}"
metrics_listen = "{METRICS}"
dataplane = "none"
eap_secrets = "{users}"
"""


def gateway_toml(tmp: Path, sock: Path, pki: Pki, *, radius: bool = False) -> str:
    """Three road-warrior connections: EAP-MSCHAPv2 (our users), EAP-TLS (our CA), and
    EAP-RADIUS; the first two prove the gateway with a PSK / its certificate."""
    users = users_file(tmp / "users.toml", {"alice": ALICE_PW, "bob": BOB_PW})
    cert, key = write(tmp / "gw.pem", pki.gw.pem), write(tmp / "gw.key", pki.gw.key_pem)
    ca = write(tmp / "ca.pem", pki.ca.pem)
    secret = write(tmp / "radius.secret", RADIUS_SECRET.encode())
    text = f"""{gateway_section(sock, users)}
[gateway.radius.servers.local]
address = "127.0.0.1"
secret_file = "{secret}"

[pools.rw]
addrs = "10.3.0.0/28"
dns = ["10.3.0.53", "fd00:3::53"]

{mschap_connection("mschap", PSK_ID)}

[connections.tls]
local_addrs = ["{GW}"]
pools = ["rw"]
local = {{ auth = "pubkey", id = "{GW_ID}", certs = ["{cert}"], key = "{key}" }}
remote = {{ auth = "eap-tls", cacerts = ["{ca}"] }}
[connections.tls.children.net]
local_ts = ["10.1.0.0/16"]
"""
    if radius:  # through FreeRADIUS; the server's Framed-IP-Address first
        text = text.replace(
            'remote = { auth = "eap-mschapv2" }', 'remote = { auth = "eap-radius" }'
        )
        text = text.replace(
            f'remote = {{ auth = "eap-tls", cacerts = ["{ca}"] }}',
            'remote = { auth = "eap-radius" }',
        )
        text = text.replace('pools = ["rw"]', 'pools = ["radius", "rw"]')
    return text


@pytest.fixture
def lab(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> tuple[Netns, Netns, Path]:
    """gw (192.0.2.1, our daemon) and client (192.0.2.2) joined by veth, and a folder."""
    return netns_pair[0], netns_pair[1], tmp_path


def road_warriors(pki: Pki) -> str:
    """alice (EAP-MSCHAPv2, the gateway's PSK), carol (EAP-TLS, the gateway's
    certificate), bob with a wrong password."""
    alice = RoadWarrior(GW, PSK_ID, "alice", password=ALICE_PW, gateway_psk=PSK, name="alice")
    carol = RoadWarrior(
        GW,
        GW_ID,
        "carol@example.org",
        method="eap-tls",
        cert="carol.pem",
        cacert="ca0.pem",
        name="carol",
    )
    bob = RoadWarrior(GW, PSK_ID, "bob", password=WRONG_PW, gateway_psk=PSK, name="bob")
    return one_swanctl_conf(alice, carol, bob)


def one_swanctl_conf(*clients: RoadWarrior) -> str:
    """One swanctl.conf: the clients' connections, their secrets sections merged."""
    confs = [c.swanctl() for c in clients]
    conns = "".join(c.split("secrets {")[0].strip()[len("connections {") : -1] for c in confs)
    secrets = "".join(c.split("secrets {")[1].rsplit("}", 1)[0] for c in confs)
    return f"connections {{{conns}}}\nsecrets {{{secrets}}}\n"


def swan(client_ns: Netns, pki: Pki, tmp: Path) -> StrongSwan:
    sw = StrongSwan(client_ns, plugins=SWAN_PLUGINS)
    install_creds(sw, pki.carol, (pki.ca,), name="carol")
    sw.start(road_warriors(pki))
    return sw


def vips_of(sw: StrongSwan, name: str) -> list[str]:
    return [v for sa in sw.list_sas() if sa["name"] == name for v in sa.get("local-vips", [])]


def ours(gw: Gateway, identity: str) -> dict[str, Any] | None:
    sas = [s for s in gw.sas() if s["eap_identity"] == identity and s["state"] == "ESTABLISHED"]
    return sas[0] if sas else None


def stats(gw: Gateway) -> dict[str, Any]:
    return dict(api(gw.socket, "stats"))


def metric(gw_ns: Netns, series: str) -> float:
    """The value of one series (name and labels as exposed) on our /metrics."""
    body = ns_get(gw_ns, f"http://{METRICS}/metrics")
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series}:\n{body[-2000:]}")


def pool_metric(gw_ns: Netns, state: str, pool: str = "rw") -> float:
    return metric(gw_ns, f'ipsec_pool_addresses{{pool="{pool}",state="{state}"}}')


def check_refused_bob(gw_ns: Netns, gw: Gateway, sw: StrongSwan, before: int) -> None:
    """bob's wrong password: AUTHENTICATION_FAILED, counted (stats and
    ipsec_auth_failures_total), logged without a password."""
    out = sw.swanctl("--initiate", "--child", "net", "--ike", "bob", check=False).stdout
    assert "AUTH_FAILED" in out or "failed" in out, out
    try:
        wait_for("the failure counted", lambda: stats(gw)["auth_failures"] == before + 1, 10)
    except AssertionError:
        raise AssertionError(f"{before} {stats(gw)}\n{out}\n{gw.log_text()[-3000:]}") from None
    assert metric(gw_ns, "ipsec_auth_failures_total") == before + 1
    log = gw.log_text()
    assert "event=ike-failed" in log and "AUTHENTICATION_FAILED" in log
    failed = [ln for ln in log.splitlines() if "event=ike-failed" in ln]
    assert any("'bob'" in ln for ln in failed), failed
    for secret in (WRONG_PW, BOB_PW, ALICE_PW, PSK, RADIUS_SECRET):
        assert secret not in log


def test_strongswan_road_warriors(lab: tuple[Netns, Netns, Path], pki: Pki) -> None:
    gw_ns, client_ns, tmp = lab
    sock = tmp / "gw.sock"
    gw = Gateway.start(gw_ns, tmp, "gw", gateway_toml(tmp, sock, pki))
    sw = swan(client_ns, pki, tmp)
    try:
        started = time.monotonic()
        sw.initiate("net", "alice")
        sw.initiate("net", "carol")
        took = time.monotonic() - started
        alice, carol = ours(gw, "alice"), ours(gw, "carol@example.org")
        assert alice and carol, gw.sas()
        assert alice["eap_method"] == "eap-mschapv2" and carol["eap_method"] == "eap-tls"
        # each has its own address of the pool, strongSwan installed it, and the Child SA's
        # selector is that address on both sides
        for sa, name in ((alice, "alice"), (carol, "carol")):
            assert vips_of(sw, name) == sa["virtual_ips"], (sw.list_sas(), sa)
            assert sa["children"][0]["remote_ts"] == [f"{sa['virtual_ips'][0]}/32"]
        assert alice["virtual_ips"] != carol["virtual_ips"]
        assert {alice["virtual_ips"][0], carol["virtual_ips"][0]} <= {
            f"10.3.0.{i}" for i in range(1, 15)
        }
        # the DNS servers arrived (strongSwan's resolve plugin wrote them)
        resolv = wait_for(
            "resolv.conf", lambda: sw.resolv_conf.exists() and sw.resolv_conf.read_text()
        )
        assert "nameserver 10.3.0.53" in resolv
        assert stats(gw)["pools"]["rw"]["online"] == 2
        assert pool_metric(gw_ns, "online") == 2
        # a delete releases the address (kept for alice: offline)
        sw.terminate_ike("alice")
        wait_for("alice's lease released", lambda: stats(gw)["pools"]["rw"]["online"] == 1)
        assert stats(gw)["pools"]["rw"]["offline"] == 1
        assert pool_metric(gw_ns, "offline") == 1
        # alice comes back: the same address
        first = alice["virtual_ips"]
        sw.initiate("net", "alice")
        again = wait_for("alice again", lambda: ours(gw, "alice"))
        assert again["virtual_ips"] == first
        check_refused_bob(gw_ns, gw, sw, stats(gw)["auth_failures"])
        print(f"two road warriors established in {took:.1f}s")
    finally:
        sw.close()
        gw.stop()


def test_eap_radius_through_freeradius(lab: tuple[Netns, Netns, Path], pki: Pki) -> None:
    """FreeRADIUS runs the methods (EAP-MSCHAPv2 from its users file, EAP-TLS with the
    gateway's certificate) and names alice's address; we relay and use its MSK."""
    gw_ns, client_ns, tmp = lab
    radius = Config(
        secret=RADIUS_SECRET.encode(),
        users={"alice": ALICE_PW, "bob": BOB_PW},
        replies={"alice": ("Framed-IP-Address = 10.9.0.77",)},
        tls=TlsFiles(pki.gw.pem + pki.ca.pem, pki.gw.key_pem, pki.ca.pem),
    )
    with freeradius(tmp / "radius", radius, ns=gw_ns) as server:
        sock = tmp / "gw.sock"
        gw = Gateway.start(gw_ns, tmp, "gw", gateway_toml(tmp, sock, pki, radius=True))
        sw = swan(client_ns, pki, tmp)
        try:
            sw.initiate("net", "alice")
            sw.initiate("net", "carol")
            alice = ours(gw, "alice")
            carol = ours(gw, "carol@example.org")
            assert alice and carol, (gw.sas(), server.log_text()[-3000:])
            assert alice["eap_method"] == carol["eap_method"] == "eap-radius"
            assert alice["virtual_ips"] == vips_of(sw, "alice") == ["10.9.0.77"]  # RADIUS's
            assert carol["virtual_ips"] == vips_of(sw, "carol") and carol["virtual_ips"][
                0
            ].startswith("10.3.0.")
            log = server.log_text()
            assert "eap_mschapv2" in log.lower() and "eap_tls" in log.lower()
            radius_stats = stats(gw)["radius"]["local"]
            assert radius_stats["replies"] >= 6 and radius_stats["timeouts"] == 0
            check_refused_bob(gw_ns, gw, sw, stats(gw)["auth_failures"])
            assert "Access-Reject" in server.log_text()
        finally:
            sw.close()
            gw.stop()


POOL6 = ipaddress.ip_network("fd00:3::/124")


def ipv6_gateway_toml(tmp: Path, sock: Path) -> str:
    """One EAP-MSCHAPv2 connection with an IPv4 pool and an IPv6 pool (its own DNS server),
    and a subnet of each family behind the gateway."""
    users = users_file(tmp / "users.toml", {"alice": ALICE_PW, "bob": BOB_PW})
    return f"""{gateway_section(sock, users)}
[pools.rw]
addrs = "10.3.0.0/28"
dns = ["10.3.0.53"]
[pools.rw6]
addrs = "{POOL6}"
dns = ["fd00:3::53"]
{mschap_connection("mschap", PSK_ID, '["rw", "rw6"]', '["10.1.0.0/16", "fd00:1::/64"]')}"""


def their_selectors(sw: StrongSwan, name: str) -> tuple[list[str], list[str]]:
    """strongSwan's view of the one Child SA of IKE SA `name`: (local_ts, remote_ts)."""
    (child,) = [c for sa in sw.list_sas() if sa["name"] == name for c in sa["child-sas"].values()]
    return child["local-ts"], child["remote-ts"]


def test_strongswan_ipv6_virtual_ips(lab: tuple[Netns, Netns, Path]) -> None:
    """alice asks for an IPv6 address only (`vips = ::`), bob for one of each family
    (`vips = 0.0.0.0, ::`): each gets it from the pool of its family, the Child SA's
    selectors are narrowed to it, the IPv6 DNS server arrives, a delete releases it."""
    gw_ns, client_ns, tmp = lab
    sock = tmp / "gw.sock"
    gw = Gateway.start(gw_ns, tmp, "gw", ipv6_gateway_toml(tmp, sock))
    alice = RoadWarrior(
        GW,
        PSK_ID,
        "alice",
        password=ALICE_PW,
        gateway_psk=PSK,
        name="alice",
        vips="::",
        remote_ts="fd00:1::/64",
    )
    bob = RoadWarrior(
        GW,
        PSK_ID,
        "bob",
        password=BOB_PW,
        gateway_psk=PSK,
        name="bob",
        vips="0.0.0.0, ::",
        remote_ts="10.1.0.0/16, fd00:1::/64",
    )
    sw = StrongSwan(client_ns, plugins=SWAN_PLUGINS)
    sw.start(one_swanctl_conf(alice, bob))
    try:
        sw.initiate("net", "alice")
        ours_alice = ours(gw, "alice")
        assert ours_alice, (gw.sas(), gw.log_text()[-3000:])
        (vip6,) = ours_alice["virtual_ips"]
        assert ipaddress.ip_address(vip6) in POOL6
        assert vips_of(sw, "alice") == [vip6], sw.list_sas()
        # the Child SA's selectors: that address on both sides, the IPv6 subnet behind us
        child = ours_alice["children"][0]
        assert child["remote_ts"] == [f"{vip6}/128"] and child["local_ts"] == ["fd00:1::/64"]
        assert their_selectors(sw, "alice") == ([f"{vip6}/128"], ["fd00:1::/64"])
        assert f"virtual_ips={vip6} dns=fd00:3::53" in gw.log_text()
        # the IPv6 DNS server arrived (strongSwan's resolve plugin wrote it)
        resolv = wait_for(
            "resolv.conf", lambda: sw.resolv_conf.exists() and sw.resolv_conf.read_text()
        )
        assert "nameserver fd00:3::53" in resolv, resolv
        assert "10.3.0.53" not in resolv  # asked for IPv6 only: no IPv4 server
        assert stats(gw)["pools"]["rw6"]["online"] == 1
        assert stats(gw)["pools"]["rw"]["online"] == 0
        assert pool_metric(gw_ns, "online", "rw6") == 1

        # both families at once
        sw.initiate("net", "bob")
        ours_bob = ours(gw, "bob")
        assert ours_bob, (gw.sas(), gw.log_text()[-3000:])
        bob4, bob6 = ours_bob["virtual_ips"]
        assert ipaddress.ip_address(bob4) in ipaddress.ip_network("10.3.0.0/28")
        assert ipaddress.ip_address(bob6) in POOL6 and bob6 != vip6
        assert sorted(vips_of(sw, "bob")) == sorted([bob4, bob6]), sw.list_sas()
        selectors = [f"{bob4}/32", f"{bob6}/128"]
        assert ours_bob["children"][0]["remote_ts"] == selectors
        assert their_selectors(sw, "bob") == (selectors, ["10.1.0.0/16", "fd00:1::/64"])
        wait_for("the IPv4 DNS server too", lambda: "10.3.0.53" in sw.resolv_conf.read_text())
        assert stats(gw)["pools"]["rw6"]["online"] == 2
        assert stats(gw)["pools"]["rw"]["online"] == 1
        assert pool_metric(gw_ns, "online", "rw6") == 2
        assert pool_metric(gw_ns, "online", "rw") == 1
        # as `gateway ctl` shows them
        assert f"EAP: 'bob' [{bob4}, {bob6}]" in ctl(sock, "list-sas").stdout
        assert "pool rw6: 2 online, 0 offline, 13 free" in ctl(sock, "stats").stdout

        # a delete releases alice's IPv6 lease (kept for her: offline); bob's stay
        sw.terminate_ike("alice")
        wait_for("alice's lease released", lambda: stats(gw)["pools"]["rw6"]["online"] == 1)
        assert stats(gw)["pools"]["rw6"]["offline"] == 1
        assert pool_metric(gw_ns, "offline", "rw6") == 1
        assert f"pool=rw6 address={vip6}" in gw.log_text()
        sw.terminate_ike("bob")
        wait_for("bob's leases released", lambda: stats(gw)["pools"]["rw6"]["online"] == 0)
        assert stats(gw)["pools"]["rw6"] == {"online": 0, "offline": 2, "free": 13}
        assert stats(gw)["pools"]["rw"] == {"online": 0, "offline": 1, "free": 13}
        # alice comes back: the same IPv6 address
        sw.initiate("net", "alice")
        again = wait_for("alice again", lambda: ours(gw, "alice"))
        assert again["virtual_ips"] == [vip6]
        print(f"alice {vip6}, bob {bob4} {bob6}")
    finally:
        sw.close()
        gw.stop()


def many_clients_toml(sock: Path, users: Path, count: int) -> str:
    lines = [
        "[gateway]",
        f'listen = ["{CLIENT}"]',
        f'control_socket = "{sock}"',
        'metrics_listen = "off"',
        'dataplane = "none"',
        f'eap_secrets = "{users}"',
    ]
    for i in range(count):
        lines += [
            f"[connections.c{i:03}]",
            f'remote_addrs = ["{GW}"]',
            f'local_addrs = ["{CLIENT}"]',
            'vips = ["0.0.0.0"]',
            f'psk = "{PSK}"',
            f'local = {{ auth = "eap-mschapv2", id = "user-{i:03}" }}',
            f'remote = {{ auth = "psk", id = "{GW_ID}" }}',
            f"[connections.c{i:03}.children.net]",
            'remote_ts = ["10.1.0.0/16"]',
            'start_action = "start"',
        ]
    return "\n".join(lines) + "\n"


def test_a_hundred_clients_at_once(lab: tuple[Netns, Netns, Path]) -> None:
    """100 of our own EAP clients start together against a gateway of two workers (each
    hands out its share of the pool): every one gets an address, no address twice."""
    gw_ns, client_ns, tmp = lab
    count = 100
    users = {f"user-{i:03}": f"password-{i:03}-xyz" for i in range(count)}
    gw_users = users_file(tmp / "gw-users.toml", users)
    client_users = users_file(tmp / "client-users.toml", users)
    gw_text = f"""
[gateway]
listen = ["{GW}"]
control_socket = "{tmp / "gw.sock"}"
metrics_listen = "off"
dataplane = "none"
workers = 2
eap_secrets = "{gw_users}"
[pools.rw]
addrs = "10.3.0.0/24"
{mschap_connection("rw", GW_ID)}"""
    gw = Gateway.start(gw_ns, tmp, "gw", gw_text)
    started = time.monotonic()
    clients = Gateway.start(
        client_ns, tmp, "clients", many_clients_toml(tmp / "clients.sock", client_users, count)
    )
    try:

        def all_up() -> list[dict[str, Any]] | None:
            sas = [s for s in gw.sas() if s["state"] == "ESTABLISHED" and s["children"]]
            return sas if len(sas) == count else None

        sas = wait_for("100 road warriors", all_up, timeout=240)
        took = time.monotonic() - started
        addresses = [sa["virtual_ips"][0] for sa in sas]
        assert len(set(addresses)) == count, sorted(addresses)
        assert {sa["eap_identity"] for sa in sas} == set(users)
        theirs = {s["virtual_ips"][0] for s in clients.sas() if s["virtual_ips"]}
        assert theirs == set(addresses)
        pools = stats(gw)["pools"]["rw"]
        assert pools["online"] == count and pools["online"] + pools["free"] == 254
        # the workers' shares: worker k hands out the addresses whose offset in the pool
        # is k mod 2 (the clients' IKE SAs land on both, by their SPIs)
        offsets = {(int(a.split(".")[-1]) - 1) % 2 for a in addresses}
        assert offsets == {0, 1}
        print(f"{count} clients in {took:.1f}s: {json.dumps(pools)}, worker shares {offsets}")
    finally:
        clients.stop()
        gw.stop()
