"""Network input never makes the engine raise: anything malformed is dropped and counted."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike import codec
from ike.constants import PayloadType
from tests.unit.ike.harness import A_IP, B_IP, Net, any_sa, pair_confs


def _captured() -> tuple[list[bytes], Net]:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump()
    return [d.data for _, d in net.log], net


CAPTURED, _ = _captured()
ADDRS = [((B_IP, 500), (A_IP, 500)), ((B_IP, 4500), (A_IP, 4500)), ((B_IP, 500), (A_IP, 4500))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(CAPTURED) - 1),
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 700),
    st.sampled_from(ADDRS),
)
def test_mutated_messages_never_raise(which: int, flips: list, cut: int, addr) -> None:  # type: ignore[no-untyped-def,type-arg]
    # a fresh responder (for IKE_SA_INIT paths) and an established pair (for the rest)
    _, net = _captured()
    data = bytearray(CAPTURED[which])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    if cut < len(data):
        data = data[: max(cut, 0)]
    for eng in (net.a, net.b):
        eng.receive_datagram(bytes(data), addr, net.now)
        eng.handle_timer(net.now + 100)
        eng.datagrams_to_send()
        while eng.next_event() is not None:
            pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(ADDRS))
def test_random_bytes_never_raise(data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
    _, net = _captured()
    before = net.b.stats.datagrams_received
    net.b.receive_datagram(data, addr, net.now)
    assert net.b.stats.datagrams_received == before + 1


FORBIDDEN = {"asyncio", "socket", "time", "pyroute2", "bcc", "gateway", "subprocess", "logging"}


def test_ike_package_imports_no_io() -> None:
    """DESIGN.md: ike/ never imports asyncio, socket, time, pyroute2, bcc or gateway."""
    root = Path(__file__).resolve().parents[3] / "ike"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{path.name} imports {n}"


# ---------------------------------------------------------------- authenticated nonsense

_ip4 = st.builds(ipaddress.IPv4Address, st.binary(min_size=4, max_size=4))
_selector = st.builds(
    lambda a, b, p, sp, ep: codec.TrafficSelector(7, p, sp, ep, a, b),
    _ip4,
    _ip4,
    st.integers(0, 255),
    st.integers(0, 65535),
    st.integers(0, 65535),
)


def _payloads() -> st.SearchStrategy:  # type: ignore[type-arg]
    transform = st.builds(
        codec.Transform,
        st.integers(0, 7),
        st.integers(0, 40),
        st.one_of(st.none(), st.sampled_from([128, 192, 256, 7])),
    )
    proposal = st.builds(
        codec.Proposal,
        st.integers(0, 3),
        st.integers(0, 4),
        st.sampled_from([b"", b"\x01\x02\x03\x04", b"\x00" * 8]),
        st.lists(transform, max_size=6).map(tuple),
    )
    one = st.one_of(
        st.builds(codec.SecurityAssociation, st.lists(proposal, min_size=1, max_size=3).map(tuple)),
        st.builds(codec.KeyExchange, st.sampled_from([0, 14, 19, 31, 99]), st.binary(max_size=70)),
        st.builds(
            codec.Identification,
            st.sampled_from([PayloadType.IDi, PayloadType.IDr]),
            st.sampled_from([1, 2, 3, 5, 9, 11, 77]),
            st.binary(max_size=20),
        ),
        st.builds(codec.Authentication, st.sampled_from([1, 2, 14]), st.binary(max_size=64)),
        st.builds(codec.Nonce, st.binary(min_size=16, max_size=40)),
        st.builds(
            codec.Notify,
            st.sampled_from([1, 14, 17, 24, 38, 16388, 16390, 16391, 16393, 40000]),
            st.binary(max_size=8),
            st.integers(0, 4),
            st.sampled_from([b"", b"\1\2\3\4"]),
        ),
        st.builds(
            codec.Delete,
            st.integers(0, 4),
            st.sampled_from([0, 4, 8]),
            st.lists(st.binary(min_size=4, max_size=4), max_size=3).map(tuple),
        ),
        st.builds(
            codec.TrafficSelectors,
            st.sampled_from([PayloadType.TSi, PayloadType.TSr]),
            st.lists(_selector, max_size=3).map(tuple),
        ),
        st.builds(
            codec.UnknownPayload, st.integers(200, 250), st.just(False), st.binary(max_size=8)
        ),
    )
    return st.lists(one, max_size=7)


def _half_open() -> Net:
    """a has sent IKE_AUTH (not delivered); b waits for it. Both hold the SK keys."""
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump(lambda i, d: 1 if i < 2 else 0)
    return net


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_payloads(), st.sampled_from([35, 36, 37, 40]), st.booleans())
def test_authentic_nonsense_never_raises(payloads, exchange, established) -> None:  # type: ignore[no-untyped-def]
    net = _half_open()
    if established:
        net.advance(5)  # the retransmitted IKE_AUTH goes through
    sa_a, sa_b = any_sa(net.a), any_sa(net.b)
    assert sa_a.sk is not None and sa_b.sk is not None
    # as a request from a to b (next expected message ID, so it is processed)
    req = sa_a.sk.protect(
        sa_a.spi_i,
        sa_a.spi_r,
        exchange,
        is_initiator=True,
        is_response=False,
        message_id=sa_b.peer_next_id,
        payloads=payloads,
    )
    net.b.receive_datagram(req, ((B_IP, 500), (A_IP, 500)), net.now)
    # as a response from b to a's outstanding request (if any)
    if sa_a.outstanding is not None:
        resp = sa_b.sk.protect(
            sa_a.spi_i,
            sa_a.spi_r,
            sa_a.outstanding.exchange,
            is_initiator=False,
            is_response=True,
            message_id=sa_a.outstanding.message_id,
            payloads=payloads,
        )
        net.a.receive_datagram(resp, ((A_IP, 500), (B_IP, 500)), net.now)
    net.pump()
    net.advance(400)
    assert net.a.next_timer() is None or net.a.ike_sas()
