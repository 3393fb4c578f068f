"""EAP in IKE_AUTH (RFC 7296 §2.16, RFC 5998), virtual IPs (§2.19) and reauthentication
(§2.8.3): two engines in memory, one the EAP client asking for an address, the other the
gateway (local methods, or a RADIUS server played by the test through the API)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from ike import events as ev
from ike.config import ChildConfig, ConnectionConfig
from ike.cp import VirtualIpAssignment, VirtualIpRequest
from ike.eap import packet as ep
from ike.eap.mschapv2 import MschapV2Server, nt_password_hash
from ike.eap.packet import EapType
from ike.eap.session import EapAuthenticator, Status
from ike.engine import RelayAnswer
from ike.errors import LocalError
from ike.ts import to_cidrs
from tests.support.pki import NOW, make_ca, make_leaf
from tests.unit.ike.harness import A_IP, B_IP, PSK, Net, all_sas, leftovers

PASSWORD = "Tr0ub4dor&3-horse"


class Users:
    """The EapSecrets hook: alice's NT hash."""

    def __init__(self, **users: str) -> None:
        self.hashes = {k.encode(): nt_password_hash(v) for k, v in users.items()}
        self.asked: list[bytes] = []

    def nt_hash(self, identity: bytes) -> bytes | None:
        self.asked.append(identity)
        return self.hashes.get(identity)


class Pool:
    """The AddressAssigner hook: 10.3.0.x in order, one per IKE SA, asked-for kept."""

    def __init__(self, size: int = 10) -> None:
        self.free = [ipaddress.IPv4Address(f"10.3.0.{i}") for i in range(1, size + 1)]
        self.held: dict[int, ipaddress.IPv4Address] = {}
        self.calls: list[tuple[str, str, VirtualIpRequest, VirtualIpAssignment | None]] = []

    def assign(
        self,
        ike_sa: int,
        connection: str,
        pools: tuple[str, ...],
        identity: str,
        request: VirtualIpRequest,
        offered: VirtualIpAssignment | None,
    ) -> VirtualIpAssignment:
        self.calls.append((connection, identity, request, offered))
        if "radius" in pools and offered is not None:
            return offered
        want = request.requested_ip4
        if want is not None and (want in self.free or want in self.held.values()):
            addr = want
        elif self.free:
            addr = self.free[0]
        else:
            return VirtualIpAssignment()
        if addr in self.free:
            self.free.remove(addr)
        self.held[ike_sa] = addr
        return VirtualIpAssignment(addr, None, (ipaddress.ip_address("10.3.255.53"),))


def client(**kw: object) -> ConnectionConfig:
    base = ConnectionConfig(
        name="hub",
        local_addrs=(A_IP,),
        remote_addrs=(B_IP,),
        local_id="alice",
        remote_id="gw.example",
        psk=PSK,
        local_auth="eap-mschapv2",
        remote_auth="psk",
        vips=("0.0.0.0",),
        children=(ChildConfig("net", (), ("10.2.0.0/16",)),),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def gateway(**kw: object) -> ConnectionConfig:
    base = ConnectionConfig(
        name="rw",
        local_addrs=(B_IP,),
        local_id="gw.example",
        psk=PSK,
        local_auth="psk",
        remote_auth="eap-mschapv2",
        pools=("rw",),
        children=(ChildConfig("net", ("10.2.0.0/16",), ()),),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def net(
    a: ConnectionConfig,
    b: ConnectionConfig,
    *,
    users: Users | None = None,
    pool: Pool | None = None,
) -> Net:
    users = users if users is not None else Users(alice=PASSWORD)
    n = Net.make(
        a,
        b,
        a_hooks={"eap_secrets": users},
        b_hooks={"eap_secrets": users, "addresses": pool if pool is not None else Pool()},
    )
    n.now = NOW
    return n


def established(n: Net, side: str) -> ev.IkeSaEstablished:
    [e] = n.of(side, ev.IkeSaEstablished)
    return e


def test_eap_mschapv2_with_a_virtual_ip_and_dns() -> None:
    n = net(client(), gateway())
    n.a.initiate("hub", now=n.now)
    n.pump()
    a, b = established(n, "a"), established(n, "b")
    assert a.eap_identity == b.eap_identity == "alice"
    assert b.eap_method == "eap-mschapv2" and a.eap_method == "eap-mschapv2"
    assert a.virtual_ips == b.virtual_ips == ("10.3.0.1",)
    assert a.dns == ("10.3.255.53",)
    [ca] = n.of("a", ev.ChildSaEstablished)
    [cb] = n.of("b", ev.ChildSaEstablished)
    # the client's selector is narrowed to its address on both sides
    assert [c for t in ca.local_ts for c in to_cidrs(t)] == ["10.3.0.1/32"]
    assert [c for t in cb.remote_ts for c in to_cidrs(t)] == ["10.3.0.1/32"]
    assert n.b.stats.eap_successes == 1 and n.a.stats.eap_successes == 1
    # list-sas' view
    [info] = n.b.ike_sas()
    assert info.virtual_ips == ("10.3.0.1",) and info.eap_identity == "alice"


def test_wrong_password_is_authentication_failed_and_never_shown() -> None:
    users_a = Users(alice="not the password at all")
    users_b = Users(alice=PASSWORD)
    n = Net.make(
        client(),
        gateway(),
        a_hooks={"eap_secrets": users_a},
        b_hooks={"eap_secrets": users_b, "addresses": Pool()},
    )
    n.now = NOW
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert not n.of("a", ev.IkeSaEstablished) and not n.of("b", ev.IkeSaEstablished)
    [fb] = n.of("b", ev.IkeSaFailed)
    [fa] = n.of("a", ev.IkeSaFailed)
    assert fb.reason == "AUTHENTICATION_FAILED" and "alice" in fb.detail
    assert fa.reason == "AUTHENTICATION_FAILED"
    for text in (fb.detail, fa.detail, repr(fb), repr(fa)):
        assert PASSWORD not in text and "not the password" not in text
    assert n.b.stats.auth_failures == 1 and n.b.stats.eap_failures == 1
    assert n.a.stats.auth_failures == 1
    # the EAP-Failure went out with AUTHENTICATION_FAILED; the gateway's SA lingers, goes
    n.advance(120)
    assert not all_sas(n.b) and leftovers(n.b, n.spis["b"]) == []


def test_unknown_user_and_eap_id() -> None:
    n = net(client(local_eap_id="mallory"), gateway())
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert not n.of("b", ev.IkeSaEstablished)  # no secret for mallory on our side either
    n = net(client(), gateway(remote_eap_id="bob"), users=Users(alice=PASSWORD, bob=PASSWORD))
    n.a.initiate("hub", now=n.now)
    n.pump()
    [fb] = n.of("b", ev.IkeSaFailed)
    assert "'alice' is not 'bob'" in fb.detail


def test_eap_identity_round_with_any_eap_id() -> None:
    n = net(client(local_eap_id="alice"), gateway(remote_eap_id="%any"))
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert established(n, "b").eap_identity == "alice"


def _pki() -> tuple[bytes, bytes, bytes, bytes, bytes]:
    ca = make_ca("Test CA")
    gw = make_leaf(ca, "gw.example", dns=("gw.example",))
    alice = make_leaf(ca, "alice", emails=("alice@example.org",))
    return ca.pem, gw.pem, gw.key_pem, alice.pem, alice.key_pem


def _first_auth_answer(n: Net) -> int:
    """The size of the gateway's first IKE_AUTH answer (its second datagram)."""
    return len([d for side, d in n.log if side == "b"][1].data)


def test_eap_tls_both_ways() -> None:
    ca, gw_cert, gw_key, alice_cert, alice_key = _pki()
    a = client(
        local_id="alice@example.org",
        local_auth="eap-tls",
        remote_auth="pubkey",
        certs=(alice_cert,),
        private_key=alice_key,
        cacerts=(ca,),
        psk=b"",
    )
    b = gateway(
        local_auth="pubkey",
        remote_auth="eap-tls",
        certs=(gw_cert,),
        private_key=gw_key,
        cacerts=(ca,),
        psk=b"",
    )
    n = net(a, b)
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert established(n, "b").eap_identity == "alice@example.org"
    assert established(n, "b").eap_method == "eap-tls"
    assert established(n, "a").virtual_ips == ("10.3.0.1",)
    with_auth = _first_auth_answer(n)
    assert with_auth > 400  # IDr, CERT, AUTH, EAP(TLS start)
    # another identity than the certificate names is refused
    # EAP-only (RFC 5998): a gateway configured to prove itself with EAP-TLS only (local
    # eap-tls) leaves AUTH and CERT out for a client that supports it (remote eap-tls)
    b_only = replace(b, local_auth="eap-tls")
    n = net(replace(a, remote_auth="eap-tls"), b_only)
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert established(n, "a").eap_identity == "alice@example.org"
    assert _first_auth_answer(n) < 150  # IDr, EAP(TLS start): no CERT, no AUTH
    # a client that does not (it wants the gateway's AUTH) is refused by it
    n = net(a, b_only)
    n.a.initiate("hub", now=n.now)
    n.pump()
    [fb] = n.of("b", ev.IkeSaFailed)
    assert "EAP-only" in fb.detail
    # EAP-MSCHAPv2 is no method for that (offline dictionary attacks): the AUTH stays
    with pytest.raises(LocalError, match="EAP-only"):
        net(client(remote_auth="eap-mschapv2"), gateway())
    with pytest.raises(LocalError, match="EAP-only"):
        net(client(), gateway(local_auth="eap-mschapv2"))
    n = net(client(), gateway())
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert n.of("a", ev.ChildSaEstablished)
    n = net(replace(a, local_id="bob@example.org"), b)
    n.a.initiate("hub", now=n.now)
    n.pump()
    [fb] = n.of("b", ev.IkeSaFailed)
    assert fb.reason == "AUTHENTICATION_FAILED" and "bob@example.org" in fb.detail


class Radius:
    """The RADIUS server, played through the API: a local MS-CHAPv2 authenticator that
    answers the relayed EAP Responses (its MSK is what MS-MPPE keys would carry)."""

    def __init__(self, n: Net, *, reject: bool = False, framed: str | None = None) -> None:
        self.n = n
        self.reject = reject
        self.framed = framed
        self.server: EapAuthenticator | None = None
        self.seen: list[ev.EapRadiusRequest] = []

    def serve(self) -> None:
        """Answer every pending EapRadiusRequest, until none is left."""
        while True:
            self.n.pump()
            reqs = [e for e in self.n.of("b", ev.EapRadiusRequest) if e not in self.seen]
            if not reqs:
                return
            for req in reqs:
                self.seen.append(req)
                self.n.b.eap_relay_answer(req.ike_sa, self._answer(req), self.n.now)

    def _answer(self, req: ev.EapRadiusRequest) -> RelayAnswer:
        if req.first:
            hashes = {b"alice": nt_password_hash(PASSWORD)}
            self.server = EapAuthenticator(
                {EapType.MSCHAPV2: lambda i: MschapV2Server(i, hashes.get)}, identity=req.identity
            )
            return RelayAnswer(eap=self.server.start())
        assert self.server is not None
        out = self.server.receive(req.eap)
        if self.server.status is Status.CONTINUE:
            return RelayAnswer(eap=out)
        if self.server.status is Status.FAILURE or self.reject:
            return RelayAnswer(eap=ep.encode_eap(ep.failure(0)), done=True)
        offered = None
        if self.framed:
            offered = VirtualIpAssignment(ipaddress.IPv4Address(self.framed))
        return RelayAnswer(eap=out, done=True, accepted=True, msk=self.server.msk, offered=offered)


def test_eap_radius_relay_waits_for_the_api_and_drops_retransmits() -> None:
    n = net(client(), gateway(remote_auth="eap-radius", pools=("radius",)))
    radius = Radius(n, framed="10.9.9.9")
    n.a.initiate("hub", now=n.now)
    n.pump()
    [req] = n.of("b", ev.EapRadiusRequest)
    assert req.first and req.identity == b"alice" and req.remote[0] == A_IP
    assert "eap=" not in repr(req)  # the EAP bytes stay out of logs
    # nothing answered yet: the client retransmits, the gateway drops it and waits
    n.advance(5)
    assert n.b.stats.requests_pending >= 1
    radius.serve()
    b = established(n, "b")
    assert b.eap_method == "eap-radius" and b.eap_identity == "alice"
    assert established(n, "a").virtual_ips == ("10.9.9.9",)  # Framed-IP-Address
    assert n.b.stats.eap_relayed == len(radius.seen) >= 3


def test_eap_radius_reject_and_timeout() -> None:
    n = net(client(), gateway(remote_auth="eap-radius"))
    radius = Radius(n, reject=True)
    n.a.initiate("hub", now=n.now)
    radius.serve()
    [fb] = n.of("b", ev.IkeSaFailed)
    assert "rejected 'alice'" in fb.detail and n.of("a", ev.IkeSaFailed)
    # no answer at all: the half-open timeout ends it; a late answer is our misuse
    n = net(client(), gateway(remote_auth="eap-radius"))
    n.a.initiate("hub", now=n.now)
    n.pump()
    [req] = n.of("b", ev.EapRadiusRequest)
    n.advance(60)
    assert [e.reason for e in n.of("b", ev.IkeSaFailed)] == ["half-open timeout"]
    with pytest.raises(LocalError):
        n.b.eap_relay_answer(req.ike_sa, RelayAnswer(error="late"), n.now)
    # the server unreachable: AUTHENTICATION_FAILED, said so
    n = net(client(), gateway(remote_auth="eap-radius"))
    n.a.initiate("hub", now=n.now)
    n.pump()
    [req] = n.of("b", ev.EapRadiusRequest)
    n.b.eap_relay_answer(req.ike_sa, RelayAnswer(error="RADIUS unreachable"), n.now)
    n.pump()
    [fb] = n.of("b", ev.IkeSaFailed)
    assert "RADIUS unreachable" in fb.detail


def test_no_address_left_refuses_the_child_sa() -> None:
    n = net(client(), gateway(), pool=Pool(size=0))
    n.a.initiate("hub", now=n.now)
    n.pump()
    assert established(n, "a").virtual_ips == ()
    [f] = n.of("a", ev.ChildSaFailed)
    assert f.reason == "INTERNAL_ADDRESS_FAILURE"
    assert n.b.stats.address_failures == 1


def _reauth_net(pool: Pool | None = None) -> Net:
    # no other rekeys meanwhile: the Child SAs are the ones reauthentication replaces
    quiet = {"rekey_time": 0.0, "life_time": 0.0, "rand_time": 0.0}
    a = client(
        reauth_time=3600.0,
        rand_time=60.0,
        rekey_time=0.0,
        children=(ChildConfig("net", (), ("10.2.0.0/16",), **quiet),),  # type: ignore[arg-type]
    )
    b = gateway(
        rekey_time=0.0,
        children=(ChildConfig("net", ("10.2.0.0/16",), (), **quiet),),  # type: ignore[arg-type]
    )
    return net(a, b, pool=pool)


def test_reauthentication_is_make_before_break() -> None:
    pool = Pool()
    n = _reauth_net(pool)
    first = n.a.initiate("hub", now=n.now)
    n.pump()
    [old_a] = n.of("a", ev.ChildSaEstablished)
    [old_b] = n.of("b", ev.ChildSaEstablished)
    n.advance(3600)
    est_a = n.of("a", ev.IkeSaEstablished)
    est_b = n.of("b", ev.IkeSaEstablished)
    assert len(est_a) == len(est_b) == 2
    new_a, new_b = est_a[1], est_b[1]
    assert new_a.reauth_of == first and new_b.reauth_of == est_b[0].ike_sa
    assert new_a.virtual_ips == ("10.3.0.1",)  # it asked for the address it held
    # the new Child SAs took the old ones over, on both sides
    child_a = n.of("a", ev.ChildSaEstablished)[1]
    child_b = n.of("b", ev.ChildSaEstablished)[1]
    assert child_a.replaces == (first, old_a.spi_in)
    assert child_b.replaces == (est_b[0].ike_sa, old_b.spi_in)
    # the old IKE SA went afterwards: "reauthenticated" on the initiator
    [gone_a] = n.of("a", ev.IkeSaDeleted)
    [gone_b] = n.of("b", ev.IkeSaDeleted)
    assert gone_a.ike_sa == first and gone_a.reason == "reauthenticated"
    assert gone_b.ike_sa == est_b[0].ike_sa and gone_b.reason == "deleted by peer"
    # the gateway kept sending on the old Child SA until then, and switched before its end
    [switched] = n.of("b", ev.ChildSaOutboundSwitched)
    assert switched.spi_in == child_b.spi_in and switched.old_spi_in == old_b.spi_in
    b_events = n.events["b"]
    assert b_events.index(switched) < b_events.index(gone_b)
    assert n.a.stats.reauths_started == n.a.stats.reauths_done == 1
    for eng in (n.a, n.b):  # (the gateway's old SA lingers a while, answering retransmits)
        assert len([i for i in eng.ike_sas() if i.state == "ESTABLISHED"]) == 1
    # and again an hour later: a new SA each time, the address kept
    n.advance(3600)
    assert len(n.of("a", ev.IkeSaEstablished)) == 3
    assert n.of("a", ev.IkeSaEstablished)[2].virtual_ips == ("10.3.0.1",)
    # nothing is left behind once it is deleted (tables, peer index, SPIs, timers)
    [last] = n.a.ike_sas()
    n.a.delete_ike_sa(last.ike_sa, n.now)
    n.pump()
    n.advance(600)
    assert leftovers(n.a, n.spis["a"]) == leftovers(n.b, n.spis["b"]) == []


def test_auth_lifetime_makes_the_client_reauthenticate() -> None:
    """RFC 4478: the gateway's reauth_time reaches a client without one."""
    n = net(client(rekey_time=0.0), gateway(reauth_time=1800.0, rekey_time=0.0))
    n.a.initiate("hub", now=n.now)
    n.pump()
    n.advance(1800)
    assert len(n.of("a", ev.IkeSaEstablished)) == 2
    assert n.of("a", ev.IkeSaDeleted)[0].reason == "reauthenticated"


def test_a_failed_reauthentication_keeps_the_old_sa() -> None:
    n = _reauth_net()
    n.a.initiate("hub", now=n.now)
    n.pump()
    users = n.b.eap_secrets
    assert isinstance(users, Users)
    users.hashes.clear()  # alice's account was closed meanwhile
    n.advance(3600)
    assert n.of("a", ev.IkeSaFailed) and not n.of("a", ev.IkeSaDeleted)
    assert len(n.a.ike_sas()) == 1  # the old one serves on, and is tried again later
