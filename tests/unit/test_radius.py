"""RADIUS for EAP pass-through (gateway/radius): the codec against RFC 2865 §7.1, the
authenticators and Message-Authenticator (RFC 3579 §3.2), MS-MPPE keys (RFC 2548), the EAP
relay session, and the asyncio client against a scripted UDP server on 127.0.0.1
(retransmission, timeout, bad replies dropped). The real server: tests/host/
test_radius_freeradius.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.radius import RadiusClient, RadiusEapSession, RadiusError, RadiusServer
from gateway.radius import codec as c
from gateway.radius.codec import Attr, Code, MsAttr, RadiusDecodeError
from ike.eap import packet as p
from ike.eap.packet import EapType

H = bytes.fromhex
SECRET = b"s3cret-of-the-nas"

# RFC 2865 §7.1: "nemo"/"arctangent", shared secret "xyzzy5461"
RFC_REQUEST = H(
    "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a0aee"
    "0406c0a80110050600000003"
)
RFC_REPLY = H("0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103")


def test_rfc2865_example_decodes_and_its_response_authenticator_verifies() -> None:
    request = c.decode_packet(RFC_REQUEST)
    assert request.code == Code.ACCESS_REQUEST and request.identifier == 0
    assert request.first(Attr.USER_NAME) == b"nemo"
    assert request.first(Attr.NAS_IP_ADDRESS) == ipaddress.IPv4Address("192.168.1.16").packed
    assert c.encode_packet(request) == RFC_REQUEST
    reply = c.decode_packet(RFC_REPLY)
    expected = c.response_authenticator(RFC_REPLY, request.authenticator, b"xyzzy5461")
    assert expected == reply.authenticator
    # ...but it carries no Message-Authenticator, so we would not take it (Blast-RADIUS)
    with pytest.raises(RadiusDecodeError, match="without Message-Authenticator"):
        c.verify_reply(RFC_REPLY, request.authenticator, b"xyzzy5461")


def test_access_request_has_a_valid_message_authenticator_first() -> None:
    auth = bytes(range(16))
    data = c.build_access_request(9, auth, [(Attr.USER_NAME, b"alice")], SECRET)
    packet = c.decode_packet(data)
    assert packet.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR
    zeroed = data[:22] + bytes(16) + data[38:]
    assert packet.attributes[0][1] == hmac.new(SECRET, zeroed, hashlib.md5).digest()
    assert packet.authenticator == auth and packet.first(Attr.USER_NAME) == b"alice"


def reply(code: int = Code.ACCESS_ACCEPT, attrs: list[c.Attribute] | None = None) -> bytes:
    return c.sign_reply(code, 9, bytes(16), attrs or [], SECRET)


def test_verify_reply_checks_both_authenticators() -> None:
    good = reply(attrs=[(Attr.REPLY_MESSAGE, b"welcome")])
    assert c.verify_reply(good, bytes(16), SECRET).first(Attr.REPLY_MESSAGE) == b"welcome"
    with pytest.raises(RadiusDecodeError, match="Response Authenticator"):
        c.verify_reply(good, bytes(16), b"another-secret")
    with pytest.raises(RadiusDecodeError, match="Response Authenticator"):
        c.verify_reply(good[:-1] + b"X", bytes(16), SECRET)
    # a forged Message-Authenticator under a correct Response Authenticator
    forged = bytearray(good)
    forged[22] ^= 1
    forged[4:20] = c.response_authenticator(bytes(forged), bytes(16), SECRET)
    with pytest.raises(RadiusDecodeError, match="Message-Authenticator does not verify"):
        c.verify_reply(bytes(forged), bytes(16), SECRET)
    with pytest.raises(RadiusDecodeError, match="Code 1"):
        c.verify_reply(reply(Code.ACCESS_REQUEST), bytes(16), SECRET)


@pytest.mark.parametrize("key", [bytes(range(16)), bytes(range(32)), b"\xff" * 31])
def test_mppe_key_round_trip(key: bytes) -> None:
    auth = H("0f403f9473978057bd83d5cb98f4227a")
    value = c.encrypt_mppe_key(key, SECRET, auth, b"\x80\x01")
    assert len(value) == 2 + 16 * ((len(key) + 16) // 16)
    assert c.decrypt_mppe_key(value, SECRET, auth) == key
    assert key not in value


def test_mppe_key_checks() -> None:
    auth = bytes(16)
    value = c.encrypt_mppe_key(bytes(32), SECRET, auth, b"\x81\x02")
    with pytest.raises(RadiusDecodeError):
        c.decrypt_mppe_key(value[:-1], SECRET, auth)  # not whole blocks
    with pytest.raises(RadiusDecodeError):
        c.decrypt_mppe_key(b"\x01" + value[1:], SECRET, auth)  # salt without the high bit
    with pytest.raises(ValueError):
        c.encrypt_mppe_key(bytes(16), SECRET, auth, b"\x01\x02")


def test_eap_message_is_split_at_253_bytes_and_joined() -> None:
    eap = p.encode_eap(p.request(3, EapType.TLS, bytes(600)))
    attrs = c.eap_message_attributes(eap)
    assert [len(v) for _, v in attrs] == [253, 253, len(eap) - 506]
    packet = c.decode_packet(c.sign_reply(Code.ACCESS_CHALLENGE, 1, bytes(16), attrs, SECRET))
    assert c.eap_message(packet) == eap


def test_vendor_attributes() -> None:
    packet = c.decode_packet(
        reply(
            attrs=[
                c.vendor_attribute(c.VENDOR_MICROSOFT, MsAttr.MS_PRIMARY_DNS_SERVER, H("0a000035")),
                c.vendor_attribute(9, 1, b"cisco-avpair"),
            ]
        )
    )
    assert packet.vendor(c.VENDOR_MICROSOFT, MsAttr.MS_PRIMARY_DNS_SERVER) == [H("0a000035")]
    assert packet.vendor(9, 1) == [b"cisco-avpair"] and packet.vendor(9, 2) == []


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_decode_or_decode_error(data: bytes, fix_length: bool) -> None:
    if fix_length and len(data) >= 20:
        data = data[:2] + len(data).to_bytes(2, "big") + data[4:]
    try:
        packet = c.decode_packet(data)
    except RadiusDecodeError:
        return
    for vendor in (c.VENDOR_MICROSOFT, 9):
        try:
            packet.vendor(vendor, 1)
        except RadiusDecodeError:
            pass


# --------------------------------------------------------------------------- EAP session


def test_session_echoes_state_and_reads_an_accept() -> None:
    session = RadiusEapSession(b"alice", calling_station_id=b"192.0.2.9[4500]")
    first = p.encode_eap(p.response(5, EapType.IDENTITY, b"alice"))
    attrs = dict(session.attributes(first))
    assert attrs[Attr.USER_NAME] == b"alice" and Attr.STATE not in attrs
    assert attrs[Attr.CALLING_STATION_ID] == b"192.0.2.9[4500]"
    assert attrs[Attr.NAS_IDENTIFIER] == b"gateway" and attrs[Attr.EAP_MESSAGE] == first
    challenge = p.encode_eap(p.request(6, EapType.MSCHAPV2, b"\x01"))
    packet = c.decode_packet(
        reply(Code.ACCESS_CHALLENGE, c.eap_message_attributes(challenge) + [(Attr.STATE, b"S1")])
    )
    got = session.reply(packet, bytes(16), SECRET)
    assert not got.done and got.eap == challenge and got.msk is None
    assert (
        dict(session.attributes(p.encode_eap(p.response(6, EapType.MSCHAPV2, b"x"))))[Attr.STATE]
        == b"S1"
    )

    auth = bytes(range(16))
    recv, send = bytes(range(16)), bytes(range(16, 32))
    accept = c.decode_packet(
        c.sign_reply(
            Code.ACCESS_ACCEPT,
            1,
            auth,
            [
                c.vendor_attribute(
                    c.VENDOR_MICROSOFT,
                    MsAttr.MS_MPPE_RECV_KEY,
                    c.encrypt_mppe_key(recv, SECRET, auth, b"\x80\x01"),
                ),
                c.vendor_attribute(
                    c.VENDOR_MICROSOFT,
                    MsAttr.MS_MPPE_SEND_KEY,
                    c.encrypt_mppe_key(send, SECRET, auth, b"\x80\x02"),
                ),
                (Attr.FRAMED_IP_ADDRESS, H("0a03004d")),
                (Attr.FRAMED_IPV6_ADDRESS, ipaddress.IPv6Address("2001:db8::4d").packed),
                (Attr.DNS_SERVER_IPV6_ADDRESS, ipaddress.IPv6Address("2001:db8::53").packed),
                (Attr.SESSION_TIMEOUT, (3600).to_bytes(4, "big")),
                (Attr.CLASS, b"group-a"),
            ],
            SECRET,
        )
    )
    done = session.reply(accept, auth, SECRET)
    assert done.accepted and done.done
    assert p.decode_eap(done.eap) == p.success(6)  # made here: the server sent no EAP-Message
    assert done.msk == recv + send + bytes(32)
    assert done.framed_ip == ipaddress.IPv4Address("10.3.0.77")
    assert done.framed_ipv6 == ipaddress.IPv6Address("2001:db8::4d")
    assert done.dns == (ipaddress.IPv6Address("2001:db8::53"),)
    assert done.session_timeout == 3600 and done.classes == (b"group-a",)
    assert "msk" not in repr(done)  # the key never shows in a log line of the reply


def test_session_reject_and_special_framed_addresses() -> None:
    session = RadiusEapSession(b"alice")
    session.attributes(p.encode_eap(p.response(5, EapType.IDENTITY, b"alice")))
    rejected = session.reply(
        c.decode_packet(reply(Code.ACCESS_REJECT, [(Attr.REPLY_MESSAGE, b"no")])), bytes(16), SECRET
    )
    assert not rejected.accepted and p.decode_eap(rejected.eap) == p.failure(5)
    assert rejected.reply_message == "no"
    for special in ("fffffffe", "ffffffff"):  # "NAS chooses" / "user chooses"
        accept = c.decode_packet(reply(attrs=[(Attr.FRAMED_IP_ADDRESS, H(special))]))
        assert session.reply(accept, bytes(16), SECRET).framed_ip is None
    with pytest.raises(RadiusDecodeError, match="without EAP-Message"):
        session.reply(c.decode_packet(reply(Code.ACCESS_CHALLENGE)), bytes(16), SECRET)
    with pytest.raises(RadiusDecodeError, match="not an EAP packet"):
        session.attributes(b"\x02")


# --------------------------------------------------------------------------- client

Script = Callable[[int, bytes], list[bytes]]


class FakeServer(asyncio.DatagramProtocol):
    """Answers each datagram as `script(n, request)` says (n counts from 0)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        n = len(self.received)
        self.received.append(data)
        assert self.transport is not None
        for out in self.script(n, data):
            self.transport.sendto(out, addr)


def accept_for(request: bytes, secret: bytes = SECRET, code: int = Code.ACCESS_ACCEPT) -> bytes:
    packet = c.decode_packet(request)
    return c.sign_reply(code, packet.identifier, packet.authenticator, [], secret)


async def with_server(
    script: Script, body: Callable[[RadiusClient], object], **kw: float
) -> FakeServer:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: FakeServer(script), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    client = RadiusClient(RadiusServer("127.0.0.1", SECRET, port, name="fake"), **kw)  # type: ignore[arg-type]
    try:
        async with client:
            await body(client)  # type: ignore[misc]
    finally:
        transport.close()
    server.client = client  # type: ignore[attr-defined]
    return server


def test_client_retransmits_the_same_bytes_until_answered() -> None:
    async def body(client: RadiusClient) -> None:
        packet, auth = await client.access_request([(Attr.USER_NAME, b"alice")])
        assert packet.code == Code.ACCESS_ACCEPT and len(auth) == 16

    server = asyncio.run(
        with_server(
            lambda n, req: [accept_for(req)] if n == 2 else [],
            body,
            retransmit_timeout=0.05,
            retransmit_tries=4,
        )
    )
    assert len(server.received) == 3 and len(set(server.received)) == 1
    stats = server.client.stats  # type: ignore[attr-defined]
    assert (stats.requests, stats.retransmits, stats.replies, stats.timeouts) == (1, 2, 1, 0)


def test_client_drops_bad_replies_and_takes_the_good_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.radius")

    def script(n: int, req: bytes) -> list[bytes]:
        good = accept_for(req)
        wrong_id = good[:1] + bytes(((good[1] + 1) & 0xFF,)) + good[2:]
        return [b"\x02\x00", wrong_id, accept_for(req, b"wrong-secret"), good]

    async def body(client: RadiusClient) -> None:
        packet, _ = await client.access_request([(Attr.USER_NAME, b"alice")])
        assert packet.code == Code.ACCESS_ACCEPT

    server = asyncio.run(with_server(script, body, retransmit_timeout=1.0))
    stats = server.client.stats  # type: ignore[attr-defined]
    assert stats.dropped == 3 and stats.replies == 1 and stats.retransmits == 0
    assert "Response Authenticator does not verify" in caplog.text
    assert SECRET.decode() not in caplog.text and "wrong-secret" not in caplog.text


def test_client_times_out_with_a_clear_error() -> None:
    async def body(client: RadiusClient) -> None:
        with pytest.raises(RadiusError, match=r"fake \(127.0.0.1:\d+\): no valid answer after 3"):
            await client.access_request([(Attr.USER_NAME, b"alice")])

    server = asyncio.run(
        with_server(lambda n, req: [], body, retransmit_timeout=0.02, retransmit_tries=3)
    )
    assert len(server.received) == 3
    assert server.client.stats.timeouts == 1  # type: ignore[attr-defined]


def test_client_runs_requests_side_by_side() -> None:
    def script(n: int, req: bytes) -> list[bytes]:
        return [accept_for(req)] if n >= 3 else []  # answer only once all three arrived

    async def body(client: RadiusClient) -> None:
        results = await asyncio.gather(
            *(client.access_request([(Attr.USER_NAME, b"u%d" % i)]) for i in range(3))
        )
        assert all(packet.code == Code.ACCESS_ACCEPT for packet, _ in results)

    server = asyncio.run(with_server(script, body, retransmit_timeout=0.1))
    ids = {c.decode_packet(d).identifier for d in server.received}
    assert len(ids) == 3  # one Identifier per request in flight


def test_client_misuse_and_secret_stays_out_of_repr() -> None:
    server = RadiusServer("127.0.0.1", SECRET)
    assert SECRET.decode() not in repr(server) and server.where == "radius (127.0.0.1:1812)"
    with pytest.raises(ValueError):
        RadiusServer("127.0.0.1", b"")
    with pytest.raises(ValueError):
        RadiusClient(server, retransmit_tries=0)

    async def closed() -> None:
        with pytest.raises(RadiusError, match="not open"):
            await RadiusClient(server).access_request([])

    asyncio.run(closed())


def test_client_accepts_a_socket_made_elsewhere() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: FakeServer(lambda n, req: [accept_for(req)]), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        client = RadiusClient(RadiusServer("127.0.0.1", SECRET, port))
        await client.open(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            packet, _ = await client.access_request([])
            assert packet.code == Code.ACCESS_ACCEPT
        finally:
            await client.close()
            transport.close()

    asyncio.run(run())
