"""Route-based children through two daemons with real IKE engines joined in memory, the
kernel's side recorded by a stand-in (the host kernel has no XFRM interfaces; the VM
tests run the real one): the interface is prepared down at start, set up with the MTU
derived from the negotiated ESP overhead when the Child SA is installed, the routes go in
(table, metric), a rekey moves nothing, a delete and a dead peer (DPD, per-connection
timers in seconds) withdraw them at once, shutdown removes what was created; list-sas,
stats and the published events show it. Config checks of the route-based keys."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.ctl import format_conns, format_sas
from gateway.config.reader import ConfigError, parse_config
from gateway.control.client import ControlClient
from gateway.daemon import Daemon
from gateway.daemon import core as daemon_core
from ike.engine import IkeEngine
from tests.support.inmemory import children, link_in_memory, until
from tests.support.inmemory import config_text as pair_config
from tests.support.tunnels import FakeTunnelKernel, KernelDataplane

ROUTE_BASED = """if_id = 7
interface = "ipsec-east"
interface_addresses = ["169.254.10.1/30"]
routes = ["10.2.0.0/24", "fd00:2::/64"]
route_table = 220
route_metric = 5
"""
# a dead peer within a fraction of a second: checks after 0.1 s of silence, given up
# 0.3 s later whatever the retransmission count
QUICK_DPD = (
    '[connections.east]\ndpd_delay = "0.1s"\ndpd_timeout = "0.3s"\n'
    'retransmit_timeout = "0.05s"\nretransmit_base = 1.0\n'
)


@dataclasses.dataclass
class Pair:
    west: Daemon
    east: Daemon
    kernel: FakeTunnelKernel
    client: ControlClient
    events: list[dict[str, Any]]

    def kinds(self) -> list[tuple[str, Any, Any]]:
        return [
            (e["type"], e.get("interface"), e.get("reason") or e.get("route"))
            for e in self.events
            if e["type"] in ("tunnel-up", "tunnel-down", "route-installed", "route-withdrawn")
        ]


Make = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def make_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    made: list[tuple[Daemon, Daemon, ControlClient]] = []

    async def make() -> Pair:
        kernel = FakeTunnelKernel()
        west_text = pair_config(
            tmp_path / "w.sock",
            "127.0.0.1",
            "127.0.0.2",
            "start",
            dataplane="xfrm",
            child_extra=ROUTE_BASED,
        ).replace("[connections.east]\n", QUICK_DPD, 1)
        west = Daemon(
            parse_config(west_text, "west.toml"),
            dataplane=KernelDataplane(),
            tunnel_kernel=lambda: kernel,
        )
        east_text = pair_config(tmp_path / "e.sock", "127.0.0.2", "127.0.0.1", "none")
        east = Daemon(parse_config(east_text, "east.toml"))
        events: list[dict[str, Any]] = []
        publish = west.control.publish

        def record(event_type: str, **fields: Any) -> None:  # from the first event on
            events.append({"type": event_type, **fields})
            publish(event_type, **fields)

        west.control.publish = record  # type: ignore[method-assign]
        link_in_memory(west, east)
        await east.start()
        await west.start()
        client = await ControlClient.connect(tmp_path / "w.sock")
        made.append((west, east, client))
        return Pair(west, east, kernel, client, events)

    yield make
    for west, east, client in made:
        await client.close()
        await west.shutdown()
        await east.shutdown()


async def test_route_based_child_interface_routes_and_their_withdrawal(make_pair: Make) -> None:
    p = await make_pair()
    kernel = p.kernel
    assert kernel.calls[0] == ("prepare", (("ipsec-east", 7),))
    await until("tunnel up", lambda: ("tunnel-up", "ipsec-east", None) in p.kinds())
    await until("routes in", lambda: len(kernel.routes) == 2)
    # AES-GCM-16 over IPv4 on a 1500-byte path: 1446 (docs/routing.md's table)
    assert ("configure", "ipsec-east", 1446, True) in kernel.calls
    assert ("address", "ipsec-east", "169.254.10.1/30") in kernel.calls
    assert {str(r) for r in kernel.routes} == {
        "10.2.0.0/24 dev ipsec-east table 220 metric 5",
        "fd00:2::/64 dev ipsec-east table 220 metric 5",
    }
    (child,) = children(p.west)
    assert child["interface"] == "ipsec-east"
    assert "offload none, interface ipsec-east" in format_sas(p.west.list_sas())
    assert "if_id_in 0x7, if_id_out 0x7, interface ipsec-east" in format_conns(p.west.list_conns())
    stats = await p.client.stats()
    (row,) = stats["tunnels"]
    assert (row["interface"], row["if_id"], row["up"], row["mtu"]) == ("ipsec-east", 7, True, 1446)
    assert (row["children"], row["routes"], row["connections"]) == (1, 2, ["east"])

    # a rekey: new SAs under the same if_id, nothing moves
    before = len(kernel.calls)
    await p.client.rekey("east.net", timeout=5)
    await until(
        "rekeyed", lambda: children(p.west) and children(p.west)[0]["spi_in"] != child["spi_in"]
    )
    await asyncio.sleep(0.1)  # the old SA's delete and retirement
    assert kernel.calls[before:] == []
    assert p.west.tunnels.interface_of(int(children(p.west)[0]["spi_in"], 16)) is not None

    # the peer deletes the Child: routes withdrawn, interface down, reason delete
    await p.east.terminate("east.net", timeout=5)
    await until("tunnel down", lambda: ("tunnel-down", "ipsec-east", "delete") in p.kinds())
    assert not kernel.routes and kernel.links["ipsec-east"].up is False
    assert ("route-withdrawn", "ipsec-east", "delete") in p.kinds()
    assert p.kinds().index(("route-withdrawn", "ipsec-east", "delete")) < p.kinds().index(
        ("tunnel-down", "ipsec-east", "delete")
    )
    stats = await p.client.stats()
    assert stats["tunnels"][0]["children"] == 0 and stats["tunnels"][0]["routes"] == 0


async def test_dead_peer_withdraws_the_routes_at_once_then_shutdown_removes(
    make_pair: Make,
) -> None:
    p = await make_pair()
    await until("routes in", lambda: len(p.kernel.routes) == 2)
    p.west.transport.send = p.east.transport.send = lambda *a: True  # type: ignore[method-assign]
    assert isinstance(p.west.engine, IkeEngine)
    started = asyncio.get_running_loop().time()
    await until("dpd", lambda: ("tunnel-down", "ipsec-east", "dpd") in p.kinds())
    # dpd_delay 0.1 s + dpd_timeout 0.3 s (a loaded machine gets slack)
    assert asyncio.get_running_loop().time() - started < 3
    assert not p.kernel.routes and p.west.totals.dpd_failures == 1
    withdrawn = [k for k in p.kinds() if k[0] == "route-withdrawn"]
    assert {k[2] for k in withdrawn} == {"dpd"} and len(withdrawn) == 2
    await p.west.shutdown()
    assert ("release", ("ipsec-east",)) in p.kernel.calls and p.kernel.closed
    assert p.kernel.links == {}


def _config(tmp_path: Path, extra: str, dataplane: str = "xfrm") -> str:
    return pair_config(
        tmp_path / "s", "127.0.0.1", "127.0.0.2", "none", dataplane=dataplane, child_extra=extra
    )


@pytest.mark.parametrize(
    ("extra", "dataplane", "message"),
    [
        ('interface = "ipsec0"\n', "xfrm", "needs if_id"),
        ('if_id_in = 1\nif_id_out = 2\ninterface = "ipsec0"\n', "xfrm", "must be equal"),
        ("if_id_in = 1\n", "xfrm", "set if_id_in and if_id_out together"),
        ('if_id = 1\nif_id_in = 1\ninterface = "ipsec0"\n', "xfrm", "either if_id or"),
        ('if_id = 0\ninterface = "ipsec0"\n', "xfrm", "if_id must be 1..4294967295"),
        ('if_id = 1\ninterface = "has space"\n', "xfrm", "invalid interface name"),
        ('routes = ["10.2.0.0/24"]\n', "xfrm", "needs interface"),
        ('if_id = 1\ninterface = "x"\nroutes = ["10.2.0.1/24"]\n', "xfrm", "host bits"),
        ('if_id = 1\ninterface = "x"\nroute_table = 255\n', "xfrm", "not a usable table"),
        ('if_id = 1\ninterface = "x"\ninterface_mtu = 40\n', "xfrm", "out of range"),
        ('if_id = 1\ninterface = "x"\n', "none", 'dataplane = "none"'),
        ('if_id = 1\ninterface = "x"\nroutes = ["127.0.0.0/8"]\n', "xfrm", "covers the peer"),
        ('updown = "/nonexistent/updown"\n', "none", "no such executable"),
    ],
)
def test_route_based_keys_are_checked(
    tmp_path: Path, extra: str, dataplane: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(tmp_path, extra, dataplane), "gw.toml")


def test_route_based_keys_read(tmp_path: Path) -> None:
    text = _config(tmp_path, ROUTE_BASED + 'updown = "/bin/true x"\nupdown_rekey = true\n')
    text += '\n[gateway.hooks]\ntimeout = "5s"\nmax_concurrent = 2\n'
    text = text.replace("[gateway.hooks]", "[gateway.hooks]", 1)
    config = parse_config(text.replace('dataplane = "xfrm"\n', 'dataplane = "xfrm"\n'), "gw.toml")
    (conn,) = config.connections
    (child,) = conn.children
    assert (child.if_id_in, child.if_id_out, child.interface) == (7, 7, "ipsec-east")
    assert child.route_prefixes == ("10.2.0.0/24", "fd00:2::/64")
    assert (child.route_table, child.route_metric, child.interface_mtu) == (220, 5, None)
    assert child.updown == "/bin/true x" and child.updown_rekey
    # distinct if_ids without an interface: for interfaces made outside the gateway
    other = parse_config(_config(tmp_path, "if_id_in = 1\nif_id_out = 2\n"), "gw.toml")
    assert (
        other.connections[0].children[0].if_id_in,
        other.connections[0].children[0].if_id_out,
    ) == (1, 2)
    # default routes: the remote selectors that are not "any"
    assert dataclasses.replace(
        child, routes=None, remote_ts=("0.0.0.0/0", "10.9.0.0/16")
    ).route_prefixes == ("10.9.0.0/16",)


def test_two_interfaces_must_not_share_a_route_key(tmp_path: Path) -> None:
    text = _config(tmp_path, 'if_id = 1\ninterface = "a"\nroutes = ["10.9.0.0/16"]\n')
    text += """
[connections.west]
remote_addrs = ["127.0.0.3"]
local = { auth = "psk", id = "w" }
remote = { auth = "psk", id = "x" }
psk = "0123456789abcdefgh"
[connections.west.children.net]
if_id = 2
interface = "b"
routes = ["10.9.0.0/16"]
"""
    with pytest.raises(ConfigError, match="another route_metric"):
        parse_config(text, "gw.toml")
    with pytest.raises(ConfigError, match="has if_id 1 elsewhere"):
        parse_config(text.replace('interface = "b"', 'interface = "a"'), "gw.toml")


class ClashingDataplane(KernelDataplane):
    """Refuses a second Child SA of the same child config, as the kernel refuses policies
    with the same key (0.0.0.0/0 with one if_id): EEXIST."""

    def install(self, child: Any, config: Any) -> Any:
        from gateway.dataplane.base import DataplaneError

        if any(i.handle == (child.connection, child.child) for i in self.installed.values()):
            raise DataplaneError(
                "NEWPOLICY policy in 0.0.0.0/0<->0.0.0.0/0: File exists (EEXIST)", errno.EEXIST
            )
        installed = super().install(child, config)
        installed = dataclasses.replace(installed, handle=(child.connection, child.child))
        self.installed[child.spi_in] = installed
        return installed


async def test_a_duplicate_of_the_same_peer_replaces_the_old_child(tmp_path: Path) -> None:
    """The peer abandoned an IKE SA (a restart, an attempt it gave up on) and brings up
    another: its Child SA replaces the old one instead of failing on the kernel's EEXIST;
    the old IKE SA is deleted, the tunnel stays up with the new Child SA."""
    kernels = {"w": FakeTunnelKernel(), "e": FakeTunnelKernel()}
    daemons = {}
    for side, local, remote, start, dp in (
        ("e", "127.0.0.2", "127.0.0.1", "none", ClashingDataplane()),
        ("w", "127.0.0.1", "127.0.0.2", "start", KernelDataplane()),
    ):
        text = pair_config(
            tmp_path / f"{side}.sock",
            local,
            remote,
            start,
            dataplane="xfrm",
            child_extra=ROUTE_BASED,
        )
        daemons[side] = Daemon(
            parse_config(text, f"{side}.toml"),
            dataplane=dp,
            tunnel_kernel=lambda side=side: kernels[side],  # type: ignore[misc]
        )
    west, east = daemons["w"], daemons["e"]
    link_in_memory(west, east)
    await east.start()
    await west.start()
    try:
        await until("up", lambda: children(west) and children(east))
        (first,) = [sa["ike_sa"] for sa in east.list_sas()]
        await west.initiate("east", timeout=5)  # a second IKE SA of the same peer
        await until(
            "replaced",
            lambda: (
                [sa["ike_sa"] for sa in east.list_sas()] not in ([first], [])
                and len(east.list_sas()) == 1
            ),
        )
        (sa,) = east.list_sas()
        assert sa["ike_sa"] != first and len(sa["children"]) == 1
        await until("west keeps one", lambda: len(west.list_sas()) == 1)
        assert len(children(west)) == 1
        assert kernels["e"].links["ipsec-east"].up and kernels["w"].links["ipsec-east"].up
        assert len(kernels["e"].routes) == 2
    finally:
        await west.shutdown()
        await east.shutdown()
