"""The fixtures every layer shares (registered by tests/conftest.py as a plugin):
network namespaces a test creates and that are removed after it, pass or fail, and a
folder for control sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import netns as netns_mod
from tests.support.daemon import socket_dir
from tests.support.strongswan import StrongSwan, charon

NetnsFactory = Callable[..., netns_mod.Netns]


@pytest.fixture
def make_netns() -> Iterator[NetnsFactory]:
    """Create namespaces on demand; all of them are removed after the test, pass or fail."""
    made: list[netns_mod.Netns] = []

    def factory(prefix: str = "gwt") -> netns_mod.Netns:
        ns = netns_mod.create(prefix)
        made.append(ns)
        return ns

    try:
        yield factory
    finally:
        for ns in reversed(made):
            ns.close()


@pytest.fixture
def netns_pair(make_netns: NetnsFactory) -> tuple[netns_mod.Netns, netns_mod.Netns]:
    """Two namespaces joined by veth: a/eth0 192.0.2.1/24 + 2001:db8::1/64 <-> b/eth0 .2/::2."""
    a, b = make_netns("gwa"), make_netns("gwb")
    netns_mod.veth(a, "eth0", b, "eth0")
    a.ip("addr", "add", "192.0.2.1/24", "dev", "eth0")
    b.ip("addr", "add", "192.0.2.2/24", "dev", "eth0")
    a.ip("addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    b.ip("addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")
    return a, b


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A folder for control sockets: guest-local in the VM (unix sockets cannot live on
    its shared 9p folders), removed after the test."""
    with socket_dir() as path:
        yield path


@pytest.fixture
def swan_lab(
    netns_pair: tuple[netns_mod.Netns, netns_mod.Netns],
) -> Iterator[tuple[netns_mod.Netns, StrongSwan]]:
    """netns_pair with charon in b (kernel-libipsec; not started: each test loads its own
    configuration); a is ours."""
    a, b = netns_pair
    with charon(b) as sw:
        yield a, sw
