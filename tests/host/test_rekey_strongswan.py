"""Rekeying between our daemon (`gateway run`, data plane `none`) and strongSwan (charon,
kernel-libipsec) in namespaces, with PFS for the Child SA (`aes256gcm16-x25519`): Child
and IKE SA rekeys initiated by us (`gateway ctl rekey`) and by strongSwan (`swanctl
--rekey --child/--ike`); after each, both sides hold one IKE SA and one Child SA with the
same (new) SPIs and the SA stays up (a liveness check is answered, no deletes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.netns import Netns
from tests.support.daemon import Gateway, ctl, ctl_json, gateway_config, wait_for
from tests.support.strongswan import StrongSwan, charon
from tests.support.swanctl_peer import peer_swanctl

OURS, THEIRS = "192.0.2.1", "192.0.2.2"
PSK = "interop-rekey-psk-0123456789"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16-x25519"

SWANCTL = peer_swanctl(THEIRS, OURS, IKE, ESP, PSK)


def our_config(sock: Path) -> str:
    return gateway_config(
        socket=sock,
        listen=[OURS],
        conns=[
            {
                "name": "swan",
                "local": OURS,
                "remote": THEIRS,
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "local_ts": ["10.1.0.0/16"],
                "remote_ts": ["10.2.0.0/16"],
                "ike": [IKE],
                "esp": [ESP],
                "psk": PSK,
                "start_action": "start",
            },
        ],
    )


def agreed(gw: Gateway, sw: StrongSwan) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Both sides settled on one IKE SA and one installed Child SA, the same SPIs."""
    ours, theirs = gw.sas(), sw.list_sas()
    if len(ours) != 1 or len(theirs) != 1:
        return None
    o, t = ours[0], theirs[0]
    children = list(t.get("child-sas", {}).values())
    if o["state"] != "ESTABLISHED" or t["state"] != "ESTABLISHED":
        return None
    if len(o["children"]) != 1 or len(children) != 1 or children[0]["state"] != "INSTALLED":
        return None
    c, sc = o["children"][0], children[0]
    if (o["spi_i"], o["spi_r"]) != (t["initiator-spi"], t["responder-spi"]):
        return None
    if (int(sc["spi-in"], 16), int(sc["spi-out"], 16)) != (
        int(c["spi_out"], 16),
        int(c["spi_in"], 16),
    ):
        return None
    return o, t


def test_rekeys_with_strongswan(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    with charon(b, SWANCTL) as sw:
        gw = Gateway.start(a, tmp_path, "west", our_config(tmp_path / "west.sock"))
        try:
            gw.installed("swan")
            o, _ = wait_for("the first SA on both sides", lambda: agreed(gw, sw))
            ike_spis = {(o["spi_i"], o["spi_r"])}
            child_spis = {o["children"][0]["spi_in"]}

            def step(what: str, action: Any, ike: bool) -> None:
                action()

                def moved() -> Any:
                    view = agreed(gw, sw)
                    if view is None:
                        return None
                    spis = (view[0]["spi_i"], view[0]["spi_r"])
                    spi_in = view[0]["children"][0]["spi_in"]
                    fresh = spis not in ike_spis if ike else spi_in not in child_spis
                    return view if fresh else None

                view = wait_for(what, moved, timeout=30)
                if not ike:  # a Child rekey with PFS: a fresh X25519 exchange
                    (swan_child,) = view[1]["child-sas"].values()
                    assert swan_child.get("dh-group") == "CURVE_25519", swan_child
                ike_spis.add((view[0]["spi_i"], view[0]["spi_r"]))
                child_spis.add(view[0]["children"][0]["spi_in"])

            step("our Child rekey", lambda: ctl(gw.socket, "rekey", "swan.net"), ike=False)
            step("our IKE rekey", lambda: ctl(gw.socket, "rekey", "swan"), ike=True)
            step("their Child rekey", lambda: sw.swanctl("--rekey", "--child", "net"), ike=False)
            step("their IKE rekey", lambda: sw.swanctl("--rekey", "--ike", "gw"), ike=True)
            # the Child SA survived both IKE rekeys, and the rekeyed IKE SA still works
            # both ways: another Child rekey from each side over it
            step("our Child rekey again", lambda: ctl(gw.socket, "rekey", "swan.net"), ike=False)
            step("theirs again", lambda: sw.swanctl("--rekey", "--child", "net"), ike=False)
            stats = ctl_json(gw.socket, "stats")
            assert stats["rekeys"] == 4
            assert stats["ike_sas"] == {"ESTABLISHED": 1} and stats["child_sas"] == 1
            assert stats["dpd_failures"] == 0
            log = gw.log_text()
            assert log.count("event=child-rekeyed") == 4 and log.count("event=ike-rekeyed") == 2
            assert "event=ike-deleted" not in log and "event=child-deleted" not in log
            assert PSK not in log
            assert (
                json.loads(ctl(gw.socket, "list-sas", "--json").stdout)[0]["ike_sa"] == o["ike_sa"]
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- ours:\n{gw.log_text()}\n--- strongSwan:\n{sw.logs()[-6000:]}"
            ) from None
        finally:
            gw.stop()
