"""IKE fragmentation (RFC 7383) between two in-memory engines: a certificate chain too big
for one datagram goes as SKF fragments, with loss, reordering, forgery and duplicates."""

from __future__ import annotations

import dataclasses

import pytest

from ike import codec
from ike.codec import EncryptedFragment, Notify
from ike.config import ConnectionConfig, EngineSettings
from ike.constants import NON_ESP_MARKER, NotifyType
from ike.events import ChildSaEstablished, Datagram, IkeSaEstablished
from tests.support.pki import NOW, Issued, make_ca, make_leaf
from tests.unit.ike.harness import Net, pair_confs

FRAGMENT_SIZE = 576  # IP datagram; the engines subtract IP/UDP headers and the marker


@pytest.fixture(scope="module")
def chain() -> tuple[Issued, Issued, Issued, Issued]:
    root = make_ca("Fragment Root CA", "p256")
    inter = make_ca("Fragment Intermediate CA", "rsa", issuer=root)  # an RSA-2048 signature
    many = tuple(f"host{i}.a.example" for i in range(40))  # a fat certificate
    a = make_leaf(inter, "a.example", "rsa", dns=("a.example", *many))
    b = make_leaf(inter, "b.example", "p256", dns=("b.example",))
    return root, inter, a, b


def confs(
    chain: tuple[Issued, ...], ike: str = "aes256gcm16-prfsha384-x25519"
) -> tuple[ConnectionConfig, ConnectionConfig]:
    root, inter, a_leaf, b_leaf = chain
    a, b = pair_confs(a_local_id="@a.example", b_local_id="@b.example", ike=(ike,))
    common = {"local_auth": "pubkey", "remote_auth": "pubkey", "psk": b""}
    a = dataclasses.replace(
        a,
        certs=(a_leaf.pem, inter.pem),
        private_key=a_leaf.key_pem,
        cacerts=(root.pem,),
        **common,  # type: ignore[arg-type]
    )
    b = dataclasses.replace(
        b,
        certs=(b_leaf.pem, inter.pem),
        private_key=b_leaf.key_pem,
        cacerts=(root.pem,),
        **common,  # type: ignore[arg-type]
    )
    return a, b


def make(
    chain: tuple[Issued, ...],
    a_frag: bool = True,
    b_frag: bool = True,
    ike: str | None = None,
    a_mode: str = "yes",
    b_mode: str = "yes",
) -> Net:
    a, b = confs(chain, ike) if ike else confs(chain)
    a = dataclasses.replace(a, fragmentation=a_mode)
    b = dataclasses.replace(b, fragmentation=b_mode)
    sa = EngineSettings(fragment_size=FRAGMENT_SIZE, fragmentation=a_frag)
    sb = EngineSettings(fragment_size=FRAGMENT_SIZE, fragmentation=b_frag)
    return Net.make(a, b, sa, sb, now=NOW)


def skf(d: Datagram) -> EncryptedFragment | None:
    data = d.data[4:] if d.data.startswith(NON_ESP_MARKER) else d.data
    msg = codec.decode_message(data)
    last = msg.payloads[-1] if msg.payloads else None
    return last if isinstance(last, EncryptedFragment) else None


def established(net: Net) -> bool:
    return all(len(net.of(s, IkeSaEstablished)) == 1 for s in "ab") and all(
        len(net.of(s, ChildSaEstablished)) == 1 for s in "ab"
    )


@pytest.mark.parametrize(
    "ike",
    ["aes256gcm16-prfsha384-x25519", "aes128-sha256-ecp256", "chacha20poly1305-prfsha256-x25519"],
)
def test_big_ike_auth_goes_in_fragments(chain: tuple[Issued, ...], ike: str) -> None:
    """AEAD and CBC+HMAC SK suites: each fragment sealed on its own."""
    net = make(chain, ike=ike)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert established(net), net.events
    init_req = codec.decode_message(net.log[0][1].data)
    assert any(
        isinstance(p, Notify) and p.type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
        for p in init_req.payloads
    )
    auth_req = [d for src, d in net.log[2:] if src == "a"]
    auth_resp = [d for src, d in net.log[2:] if src == "b"]
    frags = [skf(d) for d in auth_req]
    assert len(frags) >= 4 and all(f is not None for f in frags)
    assert [f.number for f in frags if f] == list(range(1, len(frags) + 1))
    assert all(len(d.data) <= FRAGMENT_SIZE - 28 for d in auth_req + auth_resp)
    assert all(skf(d) is not None for d in auth_resp)  # b's chain is big too (RSA CA cert)
    assert net.a.stats.integrity_failures == net.b.stats.integrity_failures == 0


def test_without_support_on_one_side_nothing_is_fragmented(chain: tuple[Issued, ...]) -> None:
    for a_frag, b_frag in ((True, False), (False, True)):
        net = make(chain, a_frag, b_frag)
        net.a.initiate("a2b", None, net.now)
        net.pump()
        assert established(net)
        assert all(skf(d) is None for _, d in net.log)
        assert max(len(d.data) for _, d in net.log) > FRAGMENT_SIZE


def test_connection_fragmentation_no_is_not_announced(chain: tuple[Issued, ...]) -> None:
    """swanctl's fragmentation = no, on either side: not announced, nothing fragmented."""
    for a_mode, b_mode in (("no", "yes"), ("yes", "no")):
        net = make(chain, a_mode=a_mode, b_mode=b_mode)
        net.a.initiate("a2b", None, net.now)
        net.pump()
        assert established(net)
        init_req, init_resp = (codec.decode_message(d.data) for _, d in net.log[:2])
        announced = [
            any(
                isinstance(p, Notify) and p.type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
                for p in m.payloads
            )
            for m in (init_req, init_resp)
        ]
        assert announced == [a_mode == "yes", a_mode == "yes" and b_mode == "yes"]
        assert all(skf(d) is None for _, d in net.log)


def test_connection_fragmentation_accept_reassembles_but_never_fragments(
    chain: tuple[Issued, ...],
) -> None:
    """swanctl's fragmentation = accept: announced, the peer's fragments are reassembled,
    our own oversized messages go whole (IP fragmentation)."""
    net = make(chain, b_mode="accept")
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert established(net)
    auth_req = [d for src, d in net.log[2:] if src == "a"]
    auth_resp = [d for src, d in net.log[2:] if src == "b"]
    assert len(auth_req) >= 4 and all(skf(d) is not None for d in auth_req)
    assert len(auth_resp) == 1 and skf(auth_resp[0]) is None
    assert len(auth_resp[0].data) > FRAGMENT_SIZE


def test_lost_fragment_is_recovered_by_retransmission(chain: tuple[Issued, ...]) -> None:
    net = make(chain)
    net.a.initiate("a2b", None, net.now)
    # drop the 2nd fragment of a's IKE_AUTH request once (datagrams 0,1 are IKE_SA_INIT)
    net.pump(lambda i, d: 0 if i == 3 else 1)
    assert not net.of("a", IkeSaEstablished)
    net.advance(10)
    assert established(net)
    assert net.a.stats.retransmits == 1


def test_reordered_forged_and_duplicated_fragments(chain: tuple[Issued, ...]) -> None:
    net = make(chain)
    net.a.initiate("a2b", None, net.now)
    init = net.a.datagrams_to_send()
    for d in init:
        net.b.receive_datagram(d.data, (d.remote, d.local), net.now)
    for d in net.b.datagrams_to_send():
        net.a.receive_datagram(d.data, (d.remote, d.local), net.now)
    fragments = net.a.datagrams_to_send()
    assert len(fragments) >= 4

    def deliver(d: Datagram, data: bytes | None = None) -> None:
        net.b.receive_datagram(data or d.data, (d.remote, d.local), net.now)

    last = fragments[-1]
    forged = bytearray(last.data)
    forged[-20] ^= 1
    deliver(last, bytes(forged))  # fails its own integrity check, dropped
    assert net.b.stats.integrity_failures == 1
    for d in reversed(fragments):  # all of them, last first, the 2nd one twice
        deliver(d)
        if d is fragments[1]:
            deliver(d)
    response = net.b.datagrams_to_send()
    assert response and all(skf(d) is not None for d in response)
    # a retransmitted request: answered once, on its fragment 1, from the cache
    for d in fragments:
        deliver(d)
    again = net.b.datagrams_to_send()
    assert [x.data for x in again] == [x.data for x in response]
    assert net.b.stats.duplicates_answered == 1
    for d in response:
        net.a.receive_datagram(d.data, (d.remote, d.local), net.now)
    net.collect()
    assert established(net)
