"""Network input never makes the engine raise: anything malformed is dropped and counted."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.ike.harness import A_IP, B_IP, Net, pair_confs


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
