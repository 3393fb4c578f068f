"""Our engine against a real strongSwan (charon-systemd, kernel-libipsec) in namespaces.

a (192.0.2.1) runs our engine behind a thin UDP driver; b (192.0.2.2) runs charon. Each
suite is negotiated with us as initiator and as responder; strongSwan's own view
(`swanctl --list-sas`) must show the IKE SA ESTABLISHED and the Child INSTALLED, with the
same SPIs and algorithms as our events. Then an ICMP echo sealed in ESP with the Child
keys from our event goes to strongSwan's userspace ESP (libipsec) and the echo reply it
sends back opens with our inbound keys: the keys are right in both directions.
"""

from __future__ import annotations

import pytest

from gateway.cli.decode import describe
from gateway.netns import Netns
from ike.config import ChildConfig, ConnectionConfig, EngineSettings
from ike.engine import IkeEngine
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from tests.support.ike_udp import UdpDriver, of_type, settled
from tests.support.strongswan import StrongSwan, ping_through_tunnel

PSK = "interop-test-psk-0123456789"
OURS, THEIRS = "192.0.2.1", "192.0.2.2"

SUITES = [
    pytest.param("aes256gcm16-prfsha384-x25519", "aes256gcm16", id="gcm256-x25519"),
    pytest.param("aes128-sha256-ecp256", "aes128-sha256", id="cbc128-ecp256"),
    pytest.param("chacha20poly1305-prfsha256-modp2048", "aes128gcm16", id="chacha-modp2048"),
]
# strongSwan's names for what we negotiated
SWAN_NAMES = {
    "aes256gcm16": ("AES_GCM_16", "256", None),
    "aes128gcm16": ("AES_GCM_16", "128", None),
    "aes128-sha256": ("AES_CBC", "128", "HMAC_SHA2_256_128"),
}


def swanctl_conf(ike: str, esp: str, *, initiator: bool, psk: str = PSK) -> str:
    return f"""connections {{
  eng {{
    version = 2
    local_addrs = {THEIRS}
    remote_addrs = {OURS}
    proposals = {ike}
    local {{
      auth = psk
      id = {THEIRS}
    }}
    remote {{
      auth = psk
      id = {OURS}
    }}
    children {{
      net {{
        local_ts = 10.2.0.0/16
        remote_ts = 10.1.0.0/16
        esp_proposals = {esp}
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-eng {{
    id-a = {OURS}
    id-b = {THEIRS}
    secret = "{psk}"
  }}
}}
"""


def our_engine(
    ike: str,
    esp: str,
    *,
    remote_ts: tuple[str, ...] = ("10.2.0.0/16",),
    settings: EngineSettings | None = None,
) -> IkeEngine:
    conn = ConnectionConfig(
        name="swan",
        local_addrs=(OURS,),
        remote_addrs=(THEIRS,),
        psk=PSK.encode(),
        ike_proposals=(ike,),
        children=(ChildConfig("net", ("10.1.0.0/16",), remote_ts, (esp,)),),
    )
    return IkeEngine([conn], settings)


def _outcome(events: list[Event], logs: str) -> tuple[IkeSaEstablished, ChildSaEstablished]:
    ests, children = of_type(events, IkeSaEstablished), of_type(events, ChildSaEstablished)
    assert len(ests) == 1 and len(children) == 1, (events, logs[-4000:])
    return ests[0], children[0]


def check_strongswan_view(
    sw: StrongSwan, child: ChildSaEstablished, ike_name: str, esp: str, ike_est: IkeSaEstablished
) -> None:
    sas = sw.list_sas()
    assert len(sas) == 1, sas
    sa = sas[0]
    assert sa["name"] == "eng" and sa["state"] == "ESTABLISHED", sa
    assert sa["initiator-spi"] == ike_est.spi_i.hex() and sa["responder-spi"] == ike_est.spi_r.hex()
    children = list(sa["child-sas"].values())
    assert len(children) == 1, children
    c = children[0]
    assert c["name"] == "net" and c["state"] == "INSTALLED", c
    # strongSwan's inbound SA is our outbound one and vice versa
    assert int(c["spi-in"], 16) == child.spi_out and int(c["spi-out"], 16) == child.spi_in
    encr, keysize, integ = SWAN_NAMES[esp]
    assert c["encr-alg"] == encr and c["encr-keysize"] == keysize
    assert c.get("integ-alg") == integ
    assert c["local-ts"] == ["10.2.0.0/16"] and c["remote-ts"] == ["10.1.0.0/16"]


@pytest.mark.parametrize("ike,esp", SUITES)
def test_engine_initiates_to_strongswan(
    swan_lab: tuple[Netns, StrongSwan], ike: str, esp: str
) -> None:
    a, sw = swan_lab
    sw.start(swanctl_conf(ike, esp, initiator=False))
    engine = our_engine(ike, esp)
    with UdpDriver(engine, a.name, OURS) as drv:
        uid = engine.initiate("swan", None, drv.now())
        drv.run_until(settled, 20)
        ike_est, child = _outcome(drv.events, sw.logs())
        check_strongswan_view(sw, child, "eng", esp, ike_est)
        ping_through_tunnel(drv, child, sw)
        # delete from our side: strongSwan answers and forgets the SA
        engine.delete_ike_sa(uid, drv.now())
        assert drv.run_until(lambda evs: bool(of_type(evs, IkeSaDeleted)), 10)
        assert of_type(drv.events, IkeSaDeleted)[0].reason == "deleted"
    assert sw.list_sas() == []


@pytest.mark.parametrize("ike,esp", SUITES)
def test_strongswan_initiates_to_engine(
    swan_lab: tuple[Netns, StrongSwan], ike: str, esp: str
) -> None:
    a, sw = swan_lab
    sw.start(swanctl_conf(ike, esp, initiator=True))
    engine = our_engine(ike, esp)
    with UdpDriver(engine, a.name, OURS) as drv:
        proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "20")
        try:
            drv.run_until(settled, 25)
            drv.run_until(lambda evs: proc.poll() is not None, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
        assert proc.returncode == 0, out
        ike_est, child = _outcome(drv.events, out + sw.logs())
        assert not ike_est.initiator
        check_strongswan_view(sw, child, "eng", esp, ike_est)
        # `gateway decode` reads strongSwan's own messages (here its IKE_SA_INIT request)
        first, port, _ = drv.ike_received[0]
        d = describe(first)
        assert d["exchange"] == "IKE_SA_INIT" and not d["response"] and port == 500
        kinds = [p["payload"] for p in d["payloads"]]
        assert kinds[:3] == ["SA", "KE", "NONCE"]
        assert any(p.get("type") == "IKEV2_FRAGMENTATION_SUPPORTED" for p in d["payloads"])
        ping_through_tunnel(drv, child, sw)
        # strongSwan deletes: our engine reports the Child, then the IKE SA, as deleted by peer
        term = sw.swanctl_popen("--terminate", "--ike", "eng", "--timeout", "10")
        try:
            assert drv.run_until(lambda evs: bool(of_type(evs, IkeSaDeleted)), 15)
        finally:
            term.communicate(timeout=15)
        assert of_type(drv.events, IkeSaDeleted)[0].reason == "deleted by peer"
    assert sw.list_sas() == []


# --------------------------------------------------------------------------- error paths

GCM_X = "aes256gcm16-prfsha384-x25519"


@pytest.mark.parametrize(
    "ours,theirs,reason",
    [
        (GCM_X, GCM_X, "AUTHENTICATION_FAILED"),  # strongSwan has another PSK
        ("aes128-sha256-ecp256", GCM_X, "NO_PROPOSAL_CHOSEN"),
    ],
    ids=["wrong-psk", "no-proposal"],
)
def test_engine_initiator_failures(
    swan_lab: tuple[Netns, StrongSwan], ours: str, theirs: str, reason: str
) -> None:
    a, sw = swan_lab
    psk = "not-the-same-psk" if reason == "AUTHENTICATION_FAILED" else PSK
    sw.start(swanctl_conf(theirs, "aes256gcm16", initiator=False, psk=psk))
    engine = our_engine(ours, "aes256gcm16")
    with UdpDriver(engine, a.name, OURS) as drv:
        engine.initiate("swan", None, drv.now())
        assert drv.run_until(settled, 15)
    assert [e.reason for e in of_type(drv.events, IkeSaFailed)] == [reason], drv.events
    assert sw.list_sas() == []


def test_invalid_ke_retry_both_ways(swan_lab: tuple[Netns, StrongSwan]) -> None:
    """Each side first offers a group the other does not take, then agrees on ecp256."""
    a, sw = swan_lab
    sw.start(swanctl_conf("aes256gcm16-prfsha384-x448-ecp256", "aes256gcm16", initiator=True))
    # our initiator leads with x25519, strongSwan only takes x448/ecp256: INVALID_KE -> ecp256
    engine = our_engine("aes256gcm16-prfsha384-x25519-ecp256", "aes256gcm16")
    with UdpDriver(engine, a.name, OURS) as drv:
        uid = engine.initiate("swan", None, drv.now())
        drv.run_until(settled, 15)
        ike_est, child = _outcome(drv.events, sw.logs())
        assert ike_est.proposal == "aes256gcm16-prfsha384-ecp256"
        assert sw.list_sas()[0]["dh-group"] == "ECP_256"
        engine.delete_ike_sa(uid, drv.now())
        assert drv.run_until(lambda evs: bool(of_type(evs, IkeSaDeleted)), 10)
    # strongSwan leads with x448 (its first group), our responder takes only ecp256
    engine = our_engine("aes256gcm16-prfsha384-ecp256", "aes256gcm16")
    with UdpDriver(engine, a.name, OURS) as drv:
        proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "15")
        try:
            drv.run_until(settled, 20)
            drv.run_until(lambda evs: proc.poll() is not None, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
        ike_est, child = _outcome(drv.events, out)
        assert ike_est.proposal == "aes256gcm16-prfsha384-ecp256"
        assert "N(INVAL_KE)" in sw.logs() and "it requested ECP_256" in sw.logs()


def test_responder_wrong_psk_and_cookie(swan_lab: tuple[Netns, StrongSwan]) -> None:
    """strongSwan with the wrong PSK gets AUTHENTICATION_FAILED from us; with the right
    one it passes our COOKIE challenge (cookie_threshold 0: every request needs one)."""
    a, sw = swan_lab
    sw.start(swanctl_conf(GCM_X, "aes256gcm16", initiator=True, psk="not-the-same-psk"))
    engine = our_engine(GCM_X, "aes256gcm16", settings=EngineSettings(cookie_threshold=0))
    with UdpDriver(engine, a.name, OURS) as drv:
        proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "10")
        try:
            drv.run_until(settled, 15)
            drv.run_until(lambda evs: proc.poll() is not None, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
        assert proc.returncode != 0
        assert [e.reason for e in of_type(drv.events, IkeSaFailed)] == ["AUTHENTICATION_FAILED"]
        assert "AUTHENTICATION_FAILED" in out + sw.logs()
        assert engine.stats.cookies_sent >= 1
        sw.write_config(swanctl_conf(GCM_X, "aes256gcm16", initiator=True))
        sw.load()
        drv.events.clear()
        proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "10")
        try:
            drv.run_until(settled, 15)
            drv.run_until(lambda evs: proc.poll() is not None, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
        assert proc.returncode == 0, out
        _outcome(drv.events, out)
        assert engine.stats.cookies_sent >= 2


def test_ts_unacceptable_keeps_ike_sa_and_liveness(swan_lab: tuple[Netns, StrongSwan]) -> None:
    a, sw = swan_lab
    sw.start(swanctl_conf(GCM_X, "aes256gcm16", initiator=False))
    fast = EngineSettings(retransmit_timeout=0.3, retransmit_tries=2)
    engine = our_engine(GCM_X, "aes256gcm16", remote_ts=("10.9.0.0/16",), settings=fast)
    with UdpDriver(engine, a.name, OURS) as drv:
        uid = engine.initiate("swan", None, drv.now())
        drv.run_until(settled, 15)
        assert [e.reason for e in of_type(drv.events, ChildSaFailed)] == ["TS_UNACCEPTABLE"]
        [ike_est] = of_type(drv.events, IkeSaEstablished)
        sas = sw.list_sas()
        assert sas[0]["state"] == "ESTABLISHED" and not sas[0].get("child-sas")
        # liveness: strongSwan answers an empty INFORMATIONAL
        sent = engine.stats.datagrams_sent
        engine.check_liveness(uid, drv.now())
        drv.run_until(lambda evs: engine.stats.datagrams_received >= 3, 5)
        assert engine.stats.datagrams_sent == sent + 1 and not of_type(drv.events, IkeSaDeleted)
        # kill strongSwan (no Delete sent): the next liveness check ends in "dead peer"
        sw.kill()
        engine.check_liveness(uid, drv.now())
        assert drv.run_until(lambda evs: bool(of_type(evs, IkeSaDeleted)), 10)
        assert of_type(drv.events, IkeSaDeleted)[0].reason == "dead peer"
        assert not of_type(drv.events, ChildSaDeleted)
        assert ike_est.ike_sa == uid


def test_ipv6_outer_and_inner(swan_lab: tuple[Netns, StrongSwan]) -> None:
    """IKE over IPv6 with IPv6 selectors, strongSwan initiating; ESP works both ways."""
    a, sw = swan_lab
    sw.ns.ip("addr", "add", "2001:db8:2::1/128", "dev", "lo")
    conf = (
        swanctl_conf(GCM_X, "aes256gcm16", initiator=True)
        .replace(THEIRS, "2001:db8::2")
        .replace(OURS, "2001:db8::1")
        .replace("10.2.0.0/16", "2001:db8:2::/48")
        .replace("10.1.0.0/16", "2001:db8:1::/48")
    )
    sw.start(conf)
    engine = IkeEngine(
        [
            ConnectionConfig(
                name="swan6",
                local_addrs=("2001:db8::1",),
                remote_addrs=("2001:db8::2",),
                psk=PSK.encode(),
                ike_proposals=(GCM_X,),
                children=(
                    ChildConfig(
                        "net", ("2001:db8:1::/48",), ("2001:db8:2::/48",), ("aes256gcm16",)
                    ),
                ),
            )
        ]
    )
    with UdpDriver(engine, a.name, "2001:db8::1") as drv:
        proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "15")
        try:
            drv.run_until(settled, 20)
            drv.run_until(lambda evs: proc.poll() is not None, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
        ike_est, child = _outcome(drv.events, out + sw.logs())
        assert ike_est.local_id == "2001:db8::1" and ike_est.remote_id == "2001:db8::2"
        c = next(iter(sw.list_sas()[0]["child-sas"].values()))
        assert c["state"] == "INSTALLED" and c["local-ts"] == ["2001:db8:2::/48"]
        assert int(c["spi-in"], 16) == child.spi_out
        assert [str(t.start_addr) for t in child.remote_ts] == ["2001:db8:2::"]


@pytest.mark.parametrize("ours_initiate", [True, False], ids=["we-initiate", "they-initiate"])
def test_strongswan_default_proposals(
    swan_lab: tuple[Netns, StrongSwan], ours_initiate: bool
) -> None:
    """strongSwan's `default` proposals (many algorithms, groups we do not implement) meet
    our one-suite configuration."""
    a, sw = swan_lab
    conf = swanctl_conf("default", "default", initiator=not ours_initiate)
    sw.start(conf)
    engine = our_engine(GCM_X, "aes256gcm16")
    with UdpDriver(engine, a.name, OURS) as drv:
        if ours_initiate:
            engine.initiate("swan", None, drv.now())
            drv.run_until(settled, 15)
            out = ""
        else:
            proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "15")
            try:
                drv.run_until(settled, 20)
                drv.run_until(lambda evs: proc.poll() is not None, 10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                out = proc.communicate()[0]
        ike_est, child = _outcome(drv.events, out + sw.logs())
        assert ike_est.proposal == GCM_X and child.proposal == "aes256gcm16"
        ping_through_tunnel(drv, child, sw)
