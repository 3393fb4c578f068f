"""IKEv2 redirect (RFC 5685) between real daemons (`gateway run`, data plane `none`) in
three namespaces: a client C joined by veth to gateway G1 (192.0.2.0/24) and to gateway
G2 (198.51.100.0/24). Driven only through `gateway ctl`, config reloads and the logs:

1. G1 has `redirect_to = G2` (IKE_SA_INIT): `ctl initiate` on C ends with an SA at G2;
2. G1's rule removed (reload); `ctl redirect clients --to G1` on G2 moves C's established
   SA to G1 (INFORMATIONAL REDIRECT), G2 is left with nothing;
3. G1 redirects in IKE_AUTH (reload): C's SA is deleted by the reload, initiated again and
   handed to G2 after authenticating;
4. a strongSwan initiator (charon, kernel-libipsec) is redirected by G1 to G2 and
   establishes there, then `ctl redirect` on G2 sends it back to G1 (separate test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.netns import Netns, veth
from tests.support.daemon import Gateway, ctl, gateway_config, wait_for
from tests.support.fixtures import NetnsFactory
from tests.support.strongswan import charon
from tests.support.swanctl_peer import peer_swanctl

C1, G1 = "192.0.2.1", "192.0.2.2"
C2, G2 = "198.51.100.1", "198.51.100.2"
PSK = "redirect-lab-psk-0123456789"


def topology(make_netns: NetnsFactory) -> tuple[Netns, Netns, Netns]:
    c, g1, g2 = make_netns("rdc"), make_netns("rd1"), make_netns("rd2")
    veth(c, "eth0", g1, "eth0")
    veth(c, "eth1", g2, "eth0")
    c.ip("addr", "add", f"{C1}/24", "dev", "eth0")
    g1.ip("addr", "add", f"{G1}/24", "dev", "eth0")
    c.ip("addr", "add", f"{C2}/24", "dev", "eth1")
    g2.ip("addr", "add", f"{G2}/24", "dev", "eth0")
    # C keeps its IKE address (C1) towards G2 as well; G2 routes the answers back
    g2.ip("route", "add", "192.0.2.0/24", "via", C2)
    g1.ip("route", "add", "198.51.100.0/24", "via", C1)
    return c, g1, g2


def gateway_conf(
    sock: Path,
    me: str,
    rule: str = "",
    ids: tuple[str, str] = ("gw", "client"),
    nets: tuple[str, str] = ("10.2", "10.1"),
) -> str:
    """One of the gateways: connection `clients` for any peer address; `rule` adds
    connection keys (redirect_to/redirect_on)."""
    return gateway_config(
        socket=sock,
        listen=[me],
        conns=[
            {
                "name": "clients",
                "local": me,
                "remote": "%any",
                "local_id": ids[0],
                "remote_id": ids[1],
                "local_ts": [f"{nets[0]}.0.0/16"],
                "remote_ts": [f"{nets[1]}.0.0/16"],
                "psk": PSK,
                "conn_extra": rule,
            }
        ],
    )


def client_conf(sock: Path) -> str:
    return gateway_config(
        socket=sock,
        listen=[C1],
        extra='retransmit_timeout = "1s"\nretransmit_tries = 2',
        conns=[
            {
                "name": "vpn",
                "local": C1,
                "remote": G1,
                "local_id": "client",
                "remote_id": "gw",
                "local_ts": ["10.1.0.0/16"],
                "remote_ts": ["10.2.0.0/16"],
                "psk": PSK,
            }
        ],
    )


def reload(gw: Gateway, text: str) -> None:
    gw.config.write_text(text)
    ctl(gw.socket, "reload")


def test_three_daemons_redirect_in_init_established_and_auth(
    make_netns: NetnsFactory, tmp_path: Path
) -> None:
    c, g1, g2 = topology(make_netns)
    rule_init = f'redirect_to = "{G2}"'
    gw1 = Gateway.start(g1, tmp_path, "g1", gateway_conf(tmp_path / "g1.sock", G1, rule_init))
    gw2 = Gateway.start(g2, tmp_path, "g2", gateway_conf(tmp_path / "g2.sock", G2))
    client = Gateway.start(c, tmp_path, "c", client_conf(tmp_path / "c.sock"))

    # 1. IKE_SA_INIT: G1 answers REDIRECT(G2, Ni); C follows with REDIRECTED_FROM
    ctl(client.socket, "initiate", "vpn")
    (sa,) = client.installed("vpn")
    assert sa["remote_addr"] == G2 and sa["remote_id"] == "gw"
    gw2.installed("clients")
    assert gw1.sas() == []
    log = client.log_text()
    assert (
        "event=ike-redirected connection=vpn role=initiator phase=init ike_sa=1 "
        f"remote={G1}:500 gateway={G2} new_ike_sa=2" in log
    )
    assert f"role=responder phase=init ike_sa=0 remote={C1}:500 gateway={G2}" in gw1.log_text()
    stats = ctl_stats(gw1)
    assert stats["redirects"] == 1 and stats["engine"]["redirects_sent"] == 1

    # 2. established: G2 drains its peers back to G1 (which no longer redirects)
    reload(gw1, gateway_conf(gw1.socket, G1))
    out = ctl(gw2.socket, "redirect", "clients", "--to", G1).stdout
    assert f"redirect clients: 1 IKE SA(s) sent to {G1}" in out
    wait_for("C at G1", lambda: [s["remote_addr"] for s in client.sas()] == [G1])
    client.installed("vpn")
    wait_for("G2 empty", lambda: gw2.sas() == [])
    assert "phase=established" in client.log_text()
    assert "reason=redirected" in client.log_text()  # the old SA's ike-deleted
    # a connection with nothing to redirect, a bad gateway: clear refusals
    bad = ctl(gw2.socket, "redirect", "clients", "--to", G1, check=False)
    assert bad.returncode == 1 and "no established IKE SA" in bad.stderr
    bad = ctl(gw1.socket, "redirect", "clients", "--to", "not a host", check=False)
    assert bad.returncode == 1 and "(bad-request)" in bad.stderr

    # 3. IKE_AUTH: G1 authenticates C, then sends it to G2 (the reload deleted C's SA)
    reload(gw1, gateway_conf(gw1.socket, G1, f'{rule_init}\nredirect_on = "auth"'))
    wait_for("C's SA deleted by the reload", lambda: client.sas() == [])
    ctl(client.socket, "initiate", "vpn")
    (sa,) = client.installed("vpn")
    assert sa["remote_addr"] == G2
    assert "role=responder phase=auth" in gw1.log_text()
    wait_for("G1 forgets the redirected SA", lambda: gw1.sas() == [])
    for gw in (client, gw1, gw2):
        assert gw.stop() == 0
        assert PSK not in gw.log_text() and "Traceback" not in gw.log_text()


def ctl_stats(gw: Gateway) -> dict[str, Any]:
    return dict(json.loads(ctl(gw.socket, "stats", "--json").stdout))


def test_strongswan_initiator_is_redirected_to_the_second_gateway(
    make_netns: NetnsFactory, tmp_path: Path
) -> None:
    c, g1, g2 = topology(make_netns)
    # charon (ids gw-east/gw-west, 10.2.0.0/16 === 10.1.0.0/16) is the client here
    swanctl = peer_swanctl("%any", G1, "aes256gcm16-prfsha384-x25519", "aes256gcm16", PSK)

    def conf(sock: Path, me: str, rule: str = "") -> str:
        return gateway_conf(sock, me, rule, ids=("gw-west", "gw-east"), nets=("10.1", "10.2"))

    gw1 = Gateway.start(g1, tmp_path, "g1", conf(tmp_path / "g1.sock", G1, f'redirect_to = "{G2}"'))
    gw2 = Gateway.start(g2, tmp_path, "g2", conf(tmp_path / "g2.sock", G2))
    with charon(c, swanctl) as sw:
        out = sw.initiate("net", "gw")
        assert "successfully" in out, out
        (theirs,) = sw.list_sas()
        assert theirs["state"] == "ESTABLISHED" and theirs["remote-host"] == G2
        (ours,) = gw2.installed("clients")
        assert ours["spi_i"] == theirs["initiator-spi"] and ours["remote_id"] == "gw-east"
        assert gw1.sas() == []
        # charon came to G1 from C1 and, redirected, to G2 from C2 (its route there)
        assert theirs["local-host"] == C2
        assert f"role=responder phase=init ike_sa=0 remote={C1}:500" in gw1.log_text()
        assert "redirected" in sw.logs().lower()

        # our INFORMATIONAL REDIRECT of an established SA: charon moves to G1 (which no
        # longer redirects) and deletes its SA at G2
        reload(gw1, conf(gw1.socket, G1))
        ctl(gw2.socket, "redirect", "clients", "--to", G1)
        wait_for("charon at G1", lambda: [s["remote-host"] for s in sw.list_sas()] == [G1])
        gw1.installed("clients")
        wait_for("G2 empty", lambda: gw2.sas() == [])
    for gw in (gw1, gw2):
        assert gw.stop() == 0
