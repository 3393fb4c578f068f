"""MOBIKE (RFC 4555) between our daemon (`gateway run`, data plane `none`) and strongSwan
(charon, kernel-libipsec) in namespaces, both ways:

1. strongSwan initiates, then its address is replaced on its veth: charon roams and
   sends UPDATE_SA_ADDRESSES; our daemon follows (list-sas shows the new remote address,
   the event stream `ike-migrated`) and a Child rekey over the new path works.
2. our daemon initiates, then our address is replaced: the daemon's netlink watcher sees
   the loss, a route lookup picks the new address and we send UPDATE_SA_ADDRESSES;
   `swanctl --list-sas` shows our new address and a Child rekey works over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.netns import Netns
from tests.support.daemon import Gateway, ctl, gateway_config, recorded_events, wait_for
from tests.support.strongswan import StrongSwan, charon
from tests.support.swanctl_peer import peer_swanctl

OURS, OURS2 = "192.0.2.1", "192.0.2.11"
THEIRS, THEIRS2 = "192.0.2.2", "192.0.2.12"
PSK = "interop-mobike-psk-0123456789"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"

# strongSwan may roam to any local address (mobike = yes is its default)
SWANCTL = peer_swanctl("%any", OURS, IKE, ESP, PSK)


def our_config(sock: Path) -> str:
    # wildcard sockets: we answer and send from whatever address we have (IP_PKTINFO)
    text = gateway_config(
        socket=sock,
        listen=["0.0.0.0"],
        extra='retransmit_timeout = "1s"\nretransmit_tries = 3',
        conns=[
            {
                "name": "swan",
                "local": OURS,
                "remote": THEIRS2,
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "local_ts": ["10.1.0.0/16"],
                "remote_ts": ["10.2.0.0/16"],
                "ike": [IKE],
                "esp": [ESP],
                "psk": PSK,
            },
        ],
    )
    # both our addresses (the roam may pick either) and both of strongSwan's
    text = text.replace(f'local_addrs = ["{OURS}"]', f'local_addrs = ["{OURS}", "{OURS2}"]')
    return text.replace(
        f'remote_addrs = ["{THEIRS2}"]', f'remote_addrs = ["{THEIRS2}", "{THEIRS}"]'
    )


def swan_host(sw: StrongSwan, end: str) -> str | None:
    """strongSwan's local or remote address of its one established IKE SA."""
    sas = [sa for sa in sw.list_sas() if sa["state"] == "ESTABLISHED"]
    return sas[0][f"{end}-host"] if len(sas) == 1 else None


def move(ns: Netns, old: str, new: str) -> None:
    """Replace an address on the namespace's veth (what a laptop changing networks sees)."""
    ns.ip("addr", "del", f"{old}/24", "dev", "eth0")
    ns.ip("addr", "add", f"{new}/24", "dev", "eth0")


def rekey_over_new_path(gw: Gateway, sw: StrongSwan, old_spi: str) -> None:
    """A CREATE_CHILD_SA exchange (our request, strongSwan's answer) on the new path.
    (charon also rekeys its Child SA after a move; either may win a collision.)"""
    ctl(gw.socket, "rekey", "swan.net", "--timeout", "20")

    def agreed() -> bool:
        sas = [sa for sa in sw.list_sas() if sa["state"] == "ESTABLISHED"]
        ours = [c["spi_in"] for sa in gw.sas() for c in sa["children"]]
        if len(sas) != 1 or len(ours) != 1 or ours[0] == old_spi:
            return False
        kids = sas[0]["child-sas"].values()
        return [c["spi-out"] for c in kids if c["state"] == "INSTALLED"] == ours

    wait_for("strongSwan and us on the rekeyed Child SA", agreed, timeout=20)


def test_mobike_with_strongswan_both_ways(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    with charon(b, SWANCTL) as sw:
        gw = Gateway.start(a, tmp_path, "west", our_config(tmp_path / "west.sock"))
        try:
            with recorded_events(gw.socket) as events:
                run_both_ways(a, b, gw, sw)
        except AssertionError:
            print(sw.logs()[-6000:])
            print(gw.log_text()[-4000:])
            raise
        finally:
            gw.stop()
        migrated = [e for e in events if e["type"] == "ike-migrated"]
        assert [(e["local_addr"], e["remote_addr"]) for e in migrated] == [
            (OURS, THEIRS2),
            (OURS2, THEIRS2),
        ]
        assert "event=mobike-roam" in gw.log_text()
        assert PSK not in gw.log_text()


def run_both_ways(a: Netns, b: Netns, gw: Gateway, sw: StrongSwan) -> None:
    """strongSwan moves and we follow; then we move (our address replaced) and it follows;
    a Child rekey over each new path."""
    # 1. strongSwan initiates and moves; we follow
    sw.initiate("net")
    (ours,) = gw.installed("swan")
    assert ours["mobike"] is True and ours["initiator"] is False
    assert (ours["remote_addr"], ours["remote_port"]) == (THEIRS, 4500)
    move(b, THEIRS, THEIRS2)

    def followed() -> dict[str, Any] | None:
        sas = gw.sas()
        return sas[0] if sas and sas[0]["remote_addr"] == THEIRS2 else None

    wait_for("our SA on strongSwan's new address", followed, timeout=30)
    (ours,) = gw.installed("swan")  # (charon also rekeys its Child after a move)
    # strongSwan announced its other address (IPv6) in IKE_AUTH or its update
    assert "2001:db8::2" in ours["additional_addrs"]
    wait_for("strongSwan on its new address", lambda: swan_host(sw, "local") == THEIRS2)
    rekey_over_new_path(gw, sw, ours["children"][0]["spi_in"])
    sw.terminate_ike("gw")
    wait_for("our SA gone", lambda: gw.sas() == [])

    # 2. we initiate (to strongSwan's new address) and move
    ctl(gw.socket, "initiate", "swan")
    (ours,) = gw.installed("swan")
    assert ours["mobike"] is True and ours["local_addr"] == OURS
    move(a, OURS, OURS2)

    wait_for("strongSwan on our new address", lambda: swan_host(sw, "remote") == OURS2)
    (ours,) = gw.installed("swan")
    assert ours["local_addr"] == OURS2
    rekey_over_new_path(gw, sw, ours["children"][0]["spi_in"])
