"""EAP through our RADIUS client to a real FreeRADIUS (tests/support/freeradius.py: its
own namespace and config directory), the EAP peer being ours: EAP-MSCHAPv2 and EAP-TLS
(TLS 1.2 and 1.3) at the server, Access-Accept with an MSK equal to what our peer derives
(MS-MPPE-Recv/Send-Key, RFC 2548), Framed-IP-Address, Access-Reject for a wrong password
or an untrusted certificate, replies dropped under a wrong shared secret, and neither
secret nor keys in our logs.

The gateway's part is played the way the daemon will: it sends EAP-Identity itself, then
relays every EAP Response in an Access-Request (RFC 3579) until Accept or Reject."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import time
from collections.abc import Iterator

import pytest

from gateway.radius import RadiusClient, RadiusEapReply, RadiusEapSession, RadiusError, RadiusServer
from gateway.radius.codec import Code
from ike.eap import mschapv2 as ms
from ike.eap import packet as p
from ike.eap import tls
from ike.eap.packet import EapType
from ike.eap.session import EapPeer, Status
from ike.pki.x509 import LocalCredential, load_trust
from tests.support import pki
from tests.support.freeradius import Config, FreeRadius, TlsFiles, freeradius

SECRET = b"radius-shared-secret-4711"
PASSWORD = "correct horse battery"
UTC = datetime.UTC


class Pki:
    """Valid around the wall clock: FreeRADIUS checks dates against it."""

    def __init__(self) -> None:
        now = datetime.datetime.now(UTC)
        nb, na = now - datetime.timedelta(days=1), now + datetime.timedelta(days=1)
        self.ca = pki.make_ca("RADIUS Test CA", "p256", not_before=nb, not_after=na)
        self.server = pki.make_leaf(
            self.ca, "radius.example", "p256", dns=("radius.example",), not_before=nb, not_after=na
        )
        self.client = pki.make_leaf(
            self.ca, "alice", "p256", emails=("alice@example.org",), not_before=nb, not_after=na
        )
        rogue = pki.make_ca("Rogue CA", "p256", not_before=nb, not_after=na)
        self.rogue_client = pki.make_leaf(rogue, "alice", "p256", not_before=nb, not_after=na)


@pytest.fixture(scope="module")
def certs() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def radius(tmp_path_factory: pytest.TempPathFactory, certs: Pki) -> Iterator[FreeRadius]:
    confdir = tmp_path_factory.mktemp("freeradius")
    config = Config(
        secret=SECRET,
        users={"alice": PASSWORD, "bob": "bobs-password-12"},
        replies={"alice": ("Framed-IP-Address = 10.3.0.77", "Session-Timeout = 3600")},
        tls=TlsFiles(certs.server.pem + certs.ca.pem, certs.server.key_pem, certs.ca.pem),
        tls_max_version="1.3",
    )
    with freeradius(confdir, config) as server:
        yield server


def mschap_peer(name: bytes, password: str) -> EapPeer:
    return EapPeer(
        name, {EapType.MSCHAPV2: lambda: ms.MschapV2Peer(name, ms.nt_password_hash(password))}
    )


def tls_peer(identity: bytes, leaf: pki.Issued, ca: pki.Issued, version: str) -> EapPeer:
    config = tls.EapTlsConfig(
        LocalCredential((leaf.cert,), leaf.key), load_trust([ca.pem]), max_version=version
    )
    return EapPeer(
        identity,
        {
            EapType.TLS: lambda: tls.EapTlsPeer(
                config,
                now=time.time(),
                server_check=lambda c: c.subject.rfc4514_string().startswith("CN=radius.example"),
            )
        },
    )


async def relay(client: RadiusClient, peer: EapPeer) -> tuple[RadiusEapReply, list[int]]:
    """The pass-through authenticator: EAP-Identity from us, then relay to the end.
    Returns the final reply and the EAP Types the server asked for on the way."""
    request = p.encode_eap(p.request(7, EapType.IDENTITY))
    response = peer.receive(request)
    assert response is not None
    session = RadiusEapSession(p.decode_eap(response).data, calling_station_id=b"192.0.2.9[4500]")
    asked: list[int] = []
    while True:
        reply = await client.eap_round(session, response)
        if reply.done:
            assert peer.receive(reply.eap) is None
            return reply, asked
        asked.append(p.decode_eap(reply.eap).type or 0)
        next_response = peer.receive(reply.eap)
        assert next_response is not None, peer.failure_reason
        response = next_response


def client_for(radius: FreeRadius, secret: bytes = SECRET, **kw: float) -> RadiusClient:
    return RadiusClient(RadiusServer(radius.address, secret, radius.port, name="fr"), **kw)  # type: ignore[arg-type]


async def run_one(radius: FreeRadius, peer: EapPeer) -> tuple[RadiusEapReply, list[int]]:
    client = client_for(radius)
    await client.open(radius.socket())
    try:
        return await relay(client, peer)
    finally:
        await client.close()


def assert_nothing_secret_in(text: str, *secrets: bytes | str) -> None:
    for secret in secrets:
        forms = [secret] if isinstance(secret, str) else [secret.hex(), secret.hex().upper()]
        if isinstance(secret, bytes):
            try:
                forms.append(secret.decode())
            except UnicodeDecodeError:
                pass
        for form in forms:
            assert form not in text


def test_mschapv2_accept_carries_the_peers_msk_and_the_framed_ip(
    radius: FreeRadius, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.radius")
    peer = mschap_peer(b"alice", PASSWORD)
    reply, asked = asyncio.run(run_one(radius, peer))
    assert reply.code == Code.ACCESS_ACCEPT and reply.accepted, radius.log_text()[-2000:]
    assert asked == [EapType.MSCHAPV2, EapType.MSCHAPV2]  # Challenge, then Success S=...
    assert peer.status is Status.SUCCESS and p.decode_eap(reply.eap).code == p.Code.SUCCESS
    assert peer.msk is not None and reply.msk == peer.msk and len(peer.msk) == 64
    assert reply.framed_ip == ipaddress.IPv4Address("10.3.0.77")
    assert reply.session_timeout == 3600
    assert "ACCESS_ACCEPT" in caplog.text  # the client logs what came back, not its content
    assert_nothing_secret_in(caplog.text + repr(reply), SECRET, PASSWORD, peer.msk)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_eap_tls_after_a_nak_gives_the_peers_msk(
    radius: FreeRadius, certs: Pki, version: str
) -> None:
    peer = tls_peer(b"alice@example.org", certs.client, certs.ca, version)
    reply, asked = asyncio.run(run_one(radius, peer))
    assert reply.accepted, radius.log_text()[-3000:]
    # FreeRADIUS proposes its default (MS-CHAPv2); our TLS-only peer Naks it
    assert asked[0] == EapType.MSCHAPV2 and set(asked[1:]) == {EapType.TLS}
    assert len(asked) > 4, "the server's flight travels in several 1 KB fragments"
    assert peer.status is Status.SUCCESS, peer.failure_reason
    assert peer.msk is not None and reply.msk == peer.msk
    method = peer._method
    assert isinstance(method, tls.EapTlsPeer) and method.tls_version == f"TLSv{version}"
    assert method.peer_certificate == certs.server.cert


def test_wrong_password_is_rejected_and_nothing_secret_is_logged(
    radius: FreeRadius, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.radius")
    peer = mschap_peer(b"alice", "not the password")
    reply, _ = asyncio.run(run_one(radius, peer))
    assert reply.code == Code.ACCESS_REJECT and not reply.accepted and reply.msk is None
    assert p.decode_eap(reply.eap).code == p.Code.FAILURE
    assert peer.status is Status.FAILURE and peer.msk is None
    assert_nothing_secret_in(caplog.text, SECRET, PASSWORD, "not the password")


def test_certificate_from_another_ca_is_rejected(radius: FreeRadius, certs: Pki) -> None:
    peer = tls_peer(b"alice@example.org", certs.rogue_client, certs.ca, "1.2")
    reply, _ = asyncio.run(run_one(radius, peer))
    assert reply.code == Code.ACCESS_REJECT and reply.msk is None
    assert peer.status is Status.FAILURE


def test_wrong_shared_secret_gets_no_answer(
    radius: FreeRadius, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.radius")
    wrong = b"not-the-shared-secret"

    async def attempt() -> RadiusClient:
        client = client_for(radius, wrong, retransmit_timeout=0.3, retransmit_tries=2)
        await client.open(radius.socket())
        try:
            with pytest.raises(RadiusError, match="no valid answer after 2 tries") as info:
                await relay(client, mschap_peer(b"alice", PASSWORD))
            assert_nothing_secret_in(str(info.value) + repr(client.server), wrong, SECRET)
            return client
        finally:
            await client.close()

    client = asyncio.run(attempt())
    # FreeRADIUS discards a request whose Message-Authenticator does not verify, so
    # nothing comes back; the client gives up after its tries (bad replies are dropped
    # too: tests/unit/test_radius.py)
    assert client.stats.timeouts == 1 and client.stats.retransmits == 1
    assert client.stats.replies == 0
    assert "invalid Message-Authenticator" in radius.log_text()
    assert_nothing_secret_in(caplog.text, wrong, SECRET, PASSWORD)


def test_concurrent_conversations_share_one_client(radius: FreeRadius) -> None:
    async def many() -> list[RadiusEapReply]:
        client = client_for(radius)
        await client.open(radius.socket())
        try:
            peers = [mschap_peer(b"bob", "bobs-password-12") for _ in range(6)]
            results = await asyncio.gather(*(relay(client, peer) for peer in peers))
            for (reply, _), peer in zip(results, peers, strict=True):
                assert reply.accepted and reply.msk == peer.msk
            return [reply for reply, _ in results]
        finally:
            await client.close()

    replies = asyncio.run(many())
    assert len({r.msk for r in replies}) == 6  # six conversations, six different keys
    assert all(r.framed_ip is None for r in replies)
