"""IKEv2 redirect (RFC 5685) in memory with a fake clock: a client and two (or three)
gateways. Redirect in IKE_SA_INIT, in IKE_AUTH and of an established SA; a forged
REDIRECT (wrong nonce) is ignored; the loop limit; FQDN gateways; no leaked SAs/SPIs."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from ike import codec, redirect
from ike.codec import Message, Notify
from ike.config import ConnectionConfig, EngineSettings
from ike.constants import ExchangeType, NotifyType
from ike.engine import IkeEngine, RandomSpis
from ike.errors import LocalError, ProtocolError
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRedirected,
)
from tests.unit.ike.harness import all_sas, conn, sa_of

CLIENT, GW1, GW2 = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def gateway(ip: str, **kw: object) -> ConnectionConfig:
    c = conn(f"gw-{ip}", ip, CLIENT, local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",))
    return dataclasses.replace(c, **kw)  # type: ignore[arg-type]


def client(**kw: object) -> ConnectionConfig:
    c = conn("vpn", CLIENT, GW1, remote_id="%any")
    return dataclasses.replace(c, **kw)  # type: ignore[arg-type]


class Net:
    """Engines by address; a datagram goes to the engine of its destination address."""

    def __init__(self, confs: dict[str, ConnectionConfig]) -> None:
        self.now = 1000.0
        self.spis = {ip: RandomSpis(random.Random(i).randbytes) for i, ip in enumerate(confs)}
        self.engines = {
            ip: IkeEngine(
                [c], EngineSettings(), random=random.Random(i).randbytes, spis=self.spis[ip]
            )
            for i, (ip, c) in enumerate(confs.items())
        }
        self.events: dict[str, list[Event]] = {ip: [] for ip in confs}
        self.log: list[Datagram] = []

        self.aliases: dict[str, str] = {}  # more addresses of an engine

    def __getitem__(self, ip: str) -> IkeEngine:
        return self.engines[ip]

    def pump(self, filt: Callable[[int, Datagram], int] | None = None) -> None:
        n = 0
        while n < 500:
            batch = [d for e in self.engines.values() for d in e.datagrams_to_send()]
            if not batch:
                break
            for d in batch:
                self.log.append(d)
                copies = filt(n, d) if filt else 1
                n += 1
                dst = self.engines.get(self.aliases.get(d.remote[0], d.remote[0]))
                for _ in range(copies if dst else 0):
                    assert dst is not None
                    dst.receive_datagram(d.data, (d.remote, d.local), self.now)
        for ip, e in self.engines.items():
            while (ev := e.next_event()) is not None:
                self.events[ip].append(ev)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [t for e in self.engines.values() if (t := e.next_timer()) is not None]
            if not due or min(due) > end:
                break
            self.now = max(self.now, min(due))
            for e in self.engines.values():
                e.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    def of(self, ip: str, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events[ip] if isinstance(e, cls)]

    def sent_to(self, ip: str, exchange: int) -> list[Message]:
        out = []
        for d in self.log:
            hdr = codec.decode_header(d.data)
            if d.remote[0] == ip and hdr.exchange_type == exchange and not hdr.is_response:
                out.append(codec.decode_message(d.data, hdr))
        return out


def notify(msg: Message, ntype: int) -> Notify | None:
    return next((p for p in msg.payloads if type(p) is Notify and p.type == ntype), None)


def redirect_answer(spi_i: bytes, data: bytes) -> bytes:
    """An IKE_SA_INIT response HDR(SPIi, 0), N(REDIRECT, data) as a gateway (or a
    forger) sends it (RFC 5685 §4.2)."""
    notify = Notify(NotifyType.REDIRECT, data)
    return codec.encode_message(
        Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, False, True, 0, (notify,))
    )


def settled(net: Net, gw: str) -> IkeSaEstablished:
    """The client ends with exactly one IKE SA and one Child SA, both with `gw`; nothing
    else is left anywhere (old attempts, SPIs)."""
    net.advance(200)
    [info] = net[CLIENT].ike_sas()
    assert info.remote[0] == gw and info.state == "ESTABLISHED" and len(info.children) == 1
    for ip, eng in net.engines.items():
        assert len(all_sas(eng)) == (1 if ip in (CLIENT, gw) else 0), (ip, all_sas(eng))
        assert len(net.spis[ip]) == (1 if ip in (CLIENT, gw) else 0)
    est = net.of(CLIENT, IkeSaEstablished)[-1]
    assert est.remote[0] == gw and est.ike_sa == info.ike_sa
    return est


def test_gateway_identity_encoding() -> None:
    """RFC 5685 §8.1: type, length, identity, then (IKE_SA_INIT only) the nonce."""
    assert (
        redirect.encode_gateway("203.0.113.7", b"NN")
        == b"\x01\x04" + bytes([203, 0, 113, 7]) + b"NN"
    )
    v6 = redirect.encode_gateway("2001:db8::7")
    assert v6[:2] == b"\x02\x10" and len(v6) == 18
    assert redirect.encode_gateway("gw2.example") == b"\x03\x0bgw2.example"
    for text in ("203.0.113.7", "2001:db8::7", "gw2.example"):
        assert redirect.decode_gateway(redirect.encode_gateway(text, b"xy")) == (text, b"xy")
    for bad in (
        b"",
        b"\x01",
        b"\x01\x05\x01\x02\x03\x04",
        b"\x01\x03abc",
        b"\x07\x01a",
        b"\x03\x02-!",
    ):
        with pytest.raises(ProtocolError):
            redirect.decode_gateway(bad)
    for bad_text in ("", "a b", "1.2.3", "-x.example", "x" * 300):
        with pytest.raises(LocalError):
            redirect.check_gateway(bad_text)


def test_redirect_in_ike_sa_init() -> None:
    net = Net({CLIENT: client(), GW1: gateway(GW1, redirect_to=GW2), GW2: gateway(GW2)})
    first = net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    [moved] = net.of(CLIENT, IkeSaRedirected)
    assert (moved.ike_sa, moved.initiator, moved.phase) == (first, True, "init")
    assert moved.remote == (GW1, 500) and moved.gateway == GW2 and moved.new_ike_sa != first
    [sent] = net.of(GW1, IkeSaRedirected)
    assert (sent.ike_sa, sent.initiator, sent.phase, sent.gateway) == (0, False, "init", GW2)
    assert sent.remote == (CLIENT, 500) and net[GW1].stats.redirects_sent == 1
    est = settled(net, GW2)
    assert est.ike_sa == moved.new_ike_sa
    # on the wire: REDIRECT_SUPPORTED to the first gateway, REDIRECTED_FROM to the second
    [to_gw1] = net.sent_to(GW1, ExchangeType.IKE_SA_INIT)
    [to_gw2] = net.sent_to(GW2, ExchangeType.IKE_SA_INIT)
    assert notify(to_gw1, NotifyType.REDIRECT_SUPPORTED) is not None
    assert notify(to_gw2, NotifyType.REDIRECT_SUPPORTED) is None
    came_from = notify(to_gw2, NotifyType.REDIRECTED_FROM)
    assert came_from is not None and came_from.data == redirect.encode_gateway(GW1)
    assert net.of(CLIENT, IkeSaFailed) == [] and net[CLIENT].stats.redirects_followed == 1


def test_redirect_in_ike_auth_after_authentication() -> None:
    net = Net(
        {
            CLIENT: client(),
            GW1: gateway(GW1, redirect_to=GW2, redirect_on="auth"),
            GW2: gateway(GW2),
        }
    )
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    [moved] = net.of(CLIENT, IkeSaRedirected)
    assert moved.phase == "auth" and moved.gateway == GW2
    [sent] = net.of(GW1, IkeSaRedirected)
    assert (sent.initiator, sent.phase, sent.connection) == (False, "auth", f"gw-{GW1}")
    # the first gateway never established anything and forgets the SA after the Delete
    assert net.of(GW1, IkeSaEstablished) == [] and net.of(GW1, ChildSaEstablished) == []
    assert net[GW1].ike_sas() == []
    [delete] = net.sent_to(GW1, ExchangeType.INFORMATIONAL)  # encrypted: the Delete
    settled(net, GW2)
    assert net.of(CLIENT, ChildSaEstablished)[-1].remote_addr == GW2
    assert len(net.of(CLIENT, ChildSaEstablished)) == 1  # none with the first gateway


def test_redirect_of_an_established_sa() -> None:
    net = Net({CLIENT: client(), GW1: gateway(GW1), GW2: gateway(GW2)})
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    [gw_sa] = net[GW1].ike_sas()
    with pytest.raises(LocalError, match="neither an IP address"):
        net[GW1].redirect_ike_sa(gw_sa.ike_sa, "not a gateway", net.now)
    net[GW1].redirect_ike_sa(gw_sa.ike_sa, GW2, net.now)
    net.pump()
    names = [type(e).__name__ for e in net.events[CLIENT]]
    assert names[2:5] == ["ChildSaDeleted", "IkeSaDeleted", "IkeSaRedirected"]
    assert net.of(CLIENT, IkeSaDeleted)[0].reason == "redirected"
    assert net.of(CLIENT, ChildSaDeleted)[0].reason == "redirected"
    [moved] = net.of(CLIENT, IkeSaRedirected)
    assert moved.phase == "established" and moved.gateway == GW2
    [sent] = net.of(GW1, IkeSaRedirected)
    assert (sent.ike_sa, sent.initiator, sent.phase) == (gw_sa.ike_sa, False, "established")
    # the client deleted the SA at the old gateway
    assert [e.reason for e in net.of(GW1, IkeSaDeleted)] == ["deleted by peer"]
    settled(net, GW2)


def test_forged_redirect_without_our_nonce_is_ignored() -> None:
    """An off-path forgery answers our IKE_SA_INIT first with a REDIRECT whose nonce data
    is not our Ni: ignored, the real answer still counts (RFC 5685 §4.2, §10)."""
    net = Net({CLIENT: client(), GW1: gateway(GW1), GW2: gateway(GW2)})
    net[CLIENT].initiate("vpn", None, net.now)
    [init] = net[CLIENT].datagrams_to_send()
    spi_i = codec.decode_header(init.data).spi_i
    for data in (
        redirect.encode_gateway(GW2, b"\x00" * 32),  # not our Ni
        redirect.encode_gateway(GW2),  # no nonce at all
        b"\x01\x09abc",  # malformed gateway identity
    ):
        net[CLIENT].receive_datagram(
            redirect_answer(spi_i, data), (init.local, init.remote), net.now
        )
    assert net[CLIENT].stats.redirects_ignored == 3
    net[GW1].receive_datagram(init.data, (init.remote, init.local), net.now)
    net.pump()
    assert net.of(CLIENT, IkeSaRedirected) == []
    settled(net, GW1)


def test_client_that_does_not_follow_is_not_redirected() -> None:
    """follow_redirects = false: no REDIRECT_SUPPORTED, so the gateway keeps it (§4.1);
    a REDIRECT sent anyway (even with the right nonce) is ignored."""
    net = Net(
        {
            CLIENT: client(follow_redirects=False),
            GW1: gateway(GW1, redirect_to=GW2),
            GW2: gateway(GW2),
        }
    )
    net[CLIENT].initiate("vpn", None, net.now)
    [init] = net[CLIENT].datagrams_to_send()
    msg = codec.decode_message(init.data, codec.decode_header(init.data))
    assert notify(msg, NotifyType.REDIRECT_SUPPORTED) is None
    ni = next(p for p in msg.payloads if type(p) is codec.Nonce).data
    forged = redirect_answer(msg.spi_i, redirect.encode_gateway(GW2, ni))
    net[CLIENT].receive_datagram(forged, (init.local, init.remote), net.now)
    net[GW1].receive_datagram(init.data, (init.remote, init.local), net.now)
    net.pump()
    assert net.of(GW1, IkeSaRedirected) == [] and net[CLIENT].stats.redirects_ignored == 1
    gw_sa = net[GW1].ike_sas()[0].ike_sa
    with pytest.raises(LocalError, match="did not announce REDIRECT_SUPPORTED"):
        net[GW1].redirect_ike_sa(gw_sa, GW2, net.now)
    settled(net, GW1)


def test_redirect_loop_limit() -> None:
    """Two gateways that send every client to each other: the client follows 5 redirects
    (strongSwan's limit within 300 s) and then gives up; no state is left anywhere."""
    net = Net(
        {
            CLIENT: client(),
            GW1: gateway(GW1, redirect_to=GW2),
            GW2: gateway(GW2, redirect_to=GW1),
        }
    )
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    moves = net.of(CLIENT, IkeSaRedirected)
    assert [m.gateway for m in moves] == [GW2, GW1, GW2, GW1, GW2]
    [failed] = net.of(CLIENT, IkeSaFailed)
    assert failed.reason == "REDIRECT_LOOP" and "5 redirects within 300 s" in failed.detail
    assert failed.ike_sa == moves[-1].new_ike_sa
    net.advance(100)
    assert all(not all_sas(e) for e in net.engines.values())
    assert len(net.sent_to(GW1, ExchangeType.IKE_SA_INIT)) == 3


def test_redirect_to_an_ipv6_gateway_from_our_ipv6_address() -> None:
    """An IPv4 gateway sends the client to an IPv6 one: the new IKE SA runs from the
    connection's IPv6 local address; REDIRECTED_FROM names the IPv4 gateway."""
    gw6, client6 = "2001:db8::3", "2001:db8::1"
    me = dataclasses.replace(client(), local_addrs=(CLIENT, client6))
    other = dataclasses.replace(gateway(GW2), local_addrs=(gw6,), remote_addrs=(client6,))
    net = Net({CLIENT: me, GW1: gateway(GW1, redirect_to=gw6), gw6: other})
    net.aliases[client6] = CLIENT
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    [info] = net[CLIENT].ike_sas()
    assert info.remote == (gw6, 500) and info.local == (client6, 500)
    assert info.state == "ESTABLISHED" and len(info.children) == 1
    [to_gw6] = net.sent_to(gw6, ExchangeType.IKE_SA_INIT)
    came_from = notify(to_gw6, NotifyType.REDIRECTED_FROM)
    assert came_from is not None and came_from.data == b"\x01\x04" + bytes([192, 0, 2, 2])
    # without an IPv6 address of our own there is nowhere to go from
    net = Net({CLIENT: client(), GW1: gateway(GW1, redirect_to=gw6)})
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    [failed] = net.of(CLIENT, IkeSaFailed)
    assert failed.reason == "REDIRECT" and "no local address of the family" in failed.detail


def test_redirect_to_a_name_is_not_followed() -> None:
    """Also after a first redirect (a chain of two): the reason says why."""
    net = Net(
        {
            CLIENT: client(),
            GW1: gateway(GW1, redirect_to=GW2),
            GW2: gateway(GW2, redirect_to="gw2.example"),
        }
    )
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    assert [m.gateway for m in net.of(CLIENT, IkeSaRedirected)] == [GW2]
    [failed] = net.of(CLIENT, IkeSaFailed)
    assert failed.reason == "REDIRECT" and "gw2.example is a name" in failed.detail
    assert net[CLIENT].ike_sas() == []


def test_bad_redirect_rules_are_refused() -> None:
    from ike.config import compile_connection

    with pytest.raises(LocalError, match="redirect_to: 'a b' is neither"):
        compile_connection(gateway(GW1, redirect_to="a b"))
    with pytest.raises(LocalError, match="redirect_on: 'later' is not init or auth"):
        compile_connection(gateway(GW1, redirect_to=GW2, redirect_on="later"))


def test_malformed_redirect_in_an_informational_is_answered_and_changes_nothing() -> None:
    net = Net({CLIENT: client(), GW1: gateway(GW1)})
    net[CLIENT].initiate("vpn", None, net.now)
    net.pump()
    gw = net[GW1]
    sa = sa_of(gw, gw.ike_sas()[0].ike_sa)
    answers: list[tuple[object, ...]] = []
    gw.send_request(
        sa,
        ExchangeType.INFORMATIONAL,
        [Notify(NotifyType.REDIRECT, b"\x09\x01x")],
        lambda h, s, m, p, d, n: answers.append(p),
        net.now,
    )
    net.pump()
    [payloads] = answers
    assert [p.type for p in payloads if type(p) is Notify] == [NotifyType.INVALID_SYNTAX]
    assert net.of(CLIENT, IkeSaRedirected) == [] and len(net[CLIENT].ike_sas()) == 1
