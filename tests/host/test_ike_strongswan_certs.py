"""Certificate authentication against a real strongSwan (charon-systemd, kernel-libipsec).

The test makes a PKI (root CA -> intermediate CA -> one leaf per side, ECDSA P-256 or RSA)
with dates around the real time. strongSwan gets its leaf, key and the root in its
swanctl directory (x509/, x509ca/, ecdsa|rsa/ beside swanctl.conf, loaded by
`swanctl --load-all --file`); our engine gets the same as bytes. Each key type runs with
our engine as initiator and as responder: both sides must report the SA established
with the other's certificate identity (strongSwan's remote auth is pubkey only), and an
ESP ping sealed with our Child keys must come back through strongSwan's libipsec. Then a
strongSwan certificate from a CA we do not trust must fail our check with the reason.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.netns import Netns
from ike.config import ChildConfig, ConnectionConfig
from ike.engine import IkeEngine
from ike.events import ChildSaEstablished, Datagram, IkeSaEstablished, IkeSaFailed
from tests.support.ike_udp import UdpDriver, of_type, settled
from tests.support.pki import Issued, make_ca, make_leaf
from tests.support.strongswan import StrongSwan, ping_through_tunnel

OURS, THEIRS = "192.0.2.1", "192.0.2.2"
OUR_ID, THEIR_ID = "west.example", "east.example"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"


class Pki:
    def __init__(self, kind: str, sans: int = 0) -> None:
        now = datetime.datetime.now(datetime.UTC)
        dates = {
            "not_before": now - datetime.timedelta(days=1),
            "not_after": now + datetime.timedelta(days=30),
        }
        self.root = make_ca("Interop Root CA", "p256", **dates)  # type: ignore[arg-type]
        self.inter = make_ca("Interop Intermediate CA", kind, issuer=self.root, **dates)  # type: ignore[arg-type]
        fat = tuple(f"alt{i}.example" for i in range(sans))  # inflate the chain (fragmentation)
        self.ours = make_leaf(self.inter, OUR_ID, kind, dns=(OUR_ID, *fat), **dates)  # type: ignore[arg-type]
        self.theirs = make_leaf(self.inter, THEIR_ID, kind, dns=(THEIR_ID, *fat), **dates)  # type: ignore[arg-type]


def swanctl_conf(*, local_id: str | None = THEIR_ID, remote_id: str = OUR_ID) -> str:
    """strongSwan's side; local_id None: its default, the certificate's subject DN."""
    id_line = f'      id = "{local_id}"\n' if local_id else ""
    return f"""connections {{
  eng {{
    version = 2
    local_addrs = {THEIRS}
    remote_addrs = {OURS}
    proposals = {IKE}
    local {{
      auth = pubkey
      certs = east.pem
{id_line}    }}
    remote {{
      auth = pubkey
      id = "{remote_id}"
    }}
    children {{
      net {{
        local_ts = 10.2.0.0/16
        remote_ts = 10.1.0.0/16
        esp_proposals = {ESP}
        start_action = none
      }}
    }}
  }}
}}
"""


def install_creds(sw: StrongSwan, leaf: Issued, cas: tuple[Issued, ...]) -> None:
    """Files where swanctl looks for them, relative to swanctl.conf (strongSwan >= 5.7.2):
    x509/ (its certificate), x509ca/ (trusted CAs), rsa/ or ecdsa/ (traditional keys)."""
    d = Path(sw.dir)
    for sub in ("x509", "x509ca", "rsa", "ecdsa"):
        (d / sub).mkdir(mode=0o700, exist_ok=True)
    (d / "x509" / "east.pem").write_bytes(leaf.pem)
    for i, ca in enumerate(cas):
        (d / "x509ca" / f"ca{i}.pem").write_bytes(ca.pem)
    key_dir = "rsa" if isinstance(leaf.key, rsa.RSAPrivateKey) else "ecdsa"
    key = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = d / key_dir / "east.key"
    path.write_bytes(key)
    path.chmod(0o600)


class RecordingEngine(IkeEngine):
    """Keeps what it sends (to see the fragments)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.sent: list[Datagram] = []

    def datagrams_to_send(self) -> list[Datagram]:
        out = super().datagrams_to_send()
        self.sent += out
        return out


def our_engine(
    pki: Pki, *, trust: Issued | None = None, local_id: str = OUR_ID, remote_id: str = THEIR_ID
) -> RecordingEngine:
    conn = ConnectionConfig(
        name="swan",
        local_addrs=(OURS,),
        remote_addrs=(THEIRS,),
        local_id=local_id,
        remote_id=remote_id,
        local_auth="pubkey",
        remote_auth="pubkey",
        certs=(pki.ours.pem, pki.inter.pem),
        private_key=pki.ours.key_pem,
        cacerts=((trust or pki.root).pem,),
        ike_proposals=(IKE,),
        children=(ChildConfig("net", ("10.1.0.0/16",), ("10.2.0.0/16",), (ESP,)),),
    )
    return RecordingEngine([conn])


def check_established(drv: UdpDriver, sw: StrongSwan, *, initiator: bool) -> ChildSaEstablished:
    ests, children = of_type(drv.events, IkeSaEstablished), of_type(drv.events, ChildSaEstablished)
    assert len(ests) == 1 and len(children) == 1, (drv.events, sw.logs()[-4000:])
    est: IkeSaEstablished = ests[0]
    assert est.initiator is initiator
    assert (est.local_id, est.remote_id) == (OUR_ID, THEIR_ID)
    (sa,) = sw.list_sas()
    # strongSwan authenticated us by our certificate (its remote auth is pubkey only)
    assert sa["state"] == "ESTABLISHED" and sa["remote-id"] == OUR_ID, sa
    assert sa["local-id"] == THEIR_ID, sa
    assert sa["initiator-spi"] == est.spi_i.hex()
    child: ChildSaEstablished = children[0]
    return child


KINDS = ["p256", "rsa"]


@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiate", "strongswan-initiates"])
@pytest.mark.parametrize("kind", KINDS)
def test_certificate_authentication(
    swan_lab: tuple[Netns, StrongSwan], kind: str, initiator: bool
) -> None:
    a, sw = swan_lab
    pki = Pki(kind)
    install_creds(sw, pki.theirs, (pki.root, pki.inter))
    sw.start(swanctl_conf())
    engine = our_engine(pki)
    with UdpDriver(engine, a.name, OURS, clock=time.time) as drv:
        if initiator:
            engine.initiate("swan", None, drv.now())
            drv.run_until(settled, 20)
        else:
            proc = sw.swanctl_popen("--initiate", "--child", "net", "--timeout", "20")
            try:
                drv.run_until(settled, 25)
                drv.run_until(lambda evs: proc.poll() is not None, 10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                out = proc.communicate()[0]
            assert proc.returncode == 0, out + sw.logs()[-3000:]
        child = check_established(drv, sw, initiator=initiator)
        ping_through_tunnel(drv, child, sw)


def test_untrusted_strongswan_certificate_fails_with_a_reason(
    swan_lab: tuple[Netns, StrongSwan],
) -> None:
    """strongSwan's certificate comes from a CA we do not trust: our initiator refuses it
    (AUTHENTICATION_FAILED, detail names the problem) and tells strongSwan."""
    a, sw = swan_lab
    pki = Pki("p256")
    stranger = Pki("p256")
    install_creds(sw, stranger.theirs, (pki.root, pki.inter, stranger.root, stranger.inter))
    sw.start(swanctl_conf())
    engine = our_engine(pki)
    with UdpDriver(engine, a.name, OURS, clock=time.time) as drv:
        engine.initiate("swan", None, drv.now())
        assert drv.run_until(settled, 20)
    (fail,) = of_type(drv.events, IkeSaFailed)
    assert fail.reason == "AUTHENTICATION_FAILED"
    assert "not a trusted CA" in fail.detail or "does not verify" in fail.detail, fail
    deadline = time.monotonic() + 5
    while sw.list_sas() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sw.list_sas() == []


def test_distinguished_name_identities(swan_lab: tuple[Netns, StrongSwan]) -> None:
    """Neither side sets an ID: both use their certificate's subject DN (strongSwan's
    default and ours) and each expects the other's DN, written in strongSwan's syntax."""
    a, sw = swan_lab
    pki = Pki("p256")
    ours = "C=CH, O=gateway tests, CN=west.example"
    theirs = "C=CH, O=gateway tests, CN=east.example"
    install_creds(sw, pki.theirs, (pki.root, pki.inter))
    sw.start(swanctl_conf(local_id=None, remote_id=ours))
    engine = our_engine(pki, local_id="", remote_id=theirs)
    with UdpDriver(engine, a.name, OURS, clock=time.time) as drv:
        engine.initiate("swan", None, drv.now())
        drv.run_until(settled, 20)
        (est,) = of_type(drv.events, IkeSaEstablished)
        assert (est.local_id, est.remote_id) == (ours, theirs)
        (sa,) = sw.list_sas()
        # (strongSwan accepted us only as `ours`: its remote id; the --raw parser splits
        # DNs at spaces, so its ID fields are not compared here)
        assert sa["state"] == "ESTABLISHED" and sa["initiator-spi"] == est.spi_i.hex(), sa


def _is_skf(data: bytes) -> bool:
    """An IKE message (after the non-ESP marker) whose first payload is SKF (53)."""
    if data[:4] == bytes(4):
        data = data[4:]
    return len(data) > 28 and data[16] == 53


def test_fragmented_ike_auth_with_a_big_chain(swan_lab: tuple[Netns, StrongSwan]) -> None:
    """RSA certificates with 60 subjectAltNames each: IKE_AUTH exceeds 1280 bytes both
    ways, so both sides fragment (RFC 7383, strongSwan's default `fragmentation = yes`
    and fragment_size 1280) and reassemble the other's fragments."""
    a, sw = swan_lab
    pki = Pki("rsa", sans=60)
    install_creds(sw, pki.theirs, (pki.root, pki.inter))
    sw.start(swanctl_conf())
    engine = our_engine(pki)
    with UdpDriver(engine, a.name, OURS, clock=time.time) as drv:
        engine.initiate("swan", None, drv.now())
        drv.run_until(settled, 20)
        child = check_established(drv, sw, initiator=True)
        ping_through_tunnel(drv, child, sw)
    ours = [d.data for d in engine.sent if _is_skf(d.data)]
    theirs = [data for data, _, _ in drv.ike_received if _is_skf(data)]
    assert len(ours) >= 2 and len(theirs) >= 2, (len(ours), len(theirs))
    assert max(len(d) for d in ours) <= 1280 - 28
