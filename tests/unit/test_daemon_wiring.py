"""gateway/daemon/ wiring, with a scripted stand-in for the IKE engine (FakeEngine) and the
`none` data plane: engine events become list-sas records, data plane installs/removals and
control events; initiate/terminate wait for their outcome; reload applies only what
changed; shutdown deletes every SA and tells the peer. The real engine against real peers
is tested in tests/host/test_daemon*.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.engine import engine_connection
from gateway.config.reader import parse_config
from gateway.control.client import ControlClient
from gateway.control.protocol import ControlError
from gateway.daemon import Daemon
from gateway.daemon.engine import InboundTraffic
from gateway.daemon.xdpslots import XdpSlots
from gateway.dataplane.base import Counters
from tests.support.daemon import PSK as SECRET
from tests.support.fake_engine import FakeEngine, RecordingDataplane


def config_text(
    socket: Path, extra: str = "", rekey: str = "1h", conn_extra: str = "", child_extra: str = ""
) -> str:
    return f"""
[gateway]
listen = ["127.0.0.1"]
port = 0
control_socket = "{socket}"
metrics_listen = "off"
dataplane = "none"

[connections.east]
local_addrs = ["127.0.0.1"]
remote_addrs = ["127.0.0.2"]
local = {{ auth = "psk", id = "gw-west" }}
remote = {{ auth = "psk", id = "gw-east" }}
psk = "{SECRET}"
{conn_extra}

[connections.east.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
start_action = "start"
rekey_time = "{rekey}"
{child_extra}
{extra}
"""


def _capture(into: list[Any], item: Any) -> bool:
    into.append(item)
    return True


@dataclasses.dataclass
class Running:
    daemon: Daemon
    engine: FakeEngine
    dataplane: RecordingDataplane
    client: ControlClient
    path: Path
    sent: list[tuple[bytes, Any]]


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    """A daemon on FakeEngine + RecordingDataplane, its datagrams captured, and a client."""
    path = tmp_path / "gw.toml"
    sock = tmp_path / "control.sock"
    path.write_text(config_text(sock))
    config = parse_config(path.read_text(), str(path), tmp_path)

    engine = FakeEngine([engine_connection(c) for c in config.connections])
    dataplane = RecordingDataplane()
    daemon = Daemon(config, config_path=str(path), dataplane=dataplane, engine=engine)
    sent: list[tuple[bytes, Any]] = []
    daemon.transport.send = lambda data, local, remote: _capture(sent, (data, remote))  # type: ignore[method-assign]
    await daemon.start()
    client = await ControlClient.connect(sock)
    try:
        yield Running(daemon, engine, dataplane, client, path, sent)
    finally:
        await client.close()
        await daemon.shutdown()


async def established(r: Running, n: int = 1) -> list[dict[str, Any]]:
    for _ in range(200):
        sas = await r.client.list_sas()
        if len([s for s in sas if s["state"] == "ESTABLISHED" and s["children"]]) >= n:
            return sas
        await asyncio.sleep(0.01)
    raise AssertionError(f"not established: {sas}")


async def test_start_action_establishes_and_list_sas_has_the_contract_fields(r: Running) -> None:
    sas = await established(r)
    (sa,) = sas
    assert sa["connection"] == "east" and sa["state"] == "ESTABLISHED"
    assert (sa["local_addr"], sa["remote_addr"]) == ("127.0.0.1", "127.0.0.2")
    assert (sa["local_id"], sa["remote_id"]) == ("gw-west", "gw-east")
    assert (sa["spi_i"], sa["spi_r"]) == ("11" * 8, "22" * 8)
    assert sa["ike_proposal"] == "aes256gcm16-prfsha384-x25519"
    assert isinstance(sa["established_at"], float)
    assert "rekey_at" in sa and "expire_at" in sa
    (child,) = sa["children"]
    assert child["name"] == "net" and child["state"] == "INSTALLED"
    assert (child["spi_in"], child["spi_out"]) == ("c0000001", "c0000002")
    assert (child["mode"], child["encap"], child["esp_proposal"]) == (
        "tunnel",
        False,
        "aes256gcm16",
    )
    assert child["offload"] == "none"
    for key in ("bytes_in", "bytes_out", "packets_in", "packets_out"):
        assert child[key] == 0
    assert (child["local_ts"], child["remote_ts"]) == (["10.1.0.0/24"], ["10.2.0.0/24"])
    assert isinstance(child["installed_at"], float)
    # the engine's datagram went out through the transport; the SA is in the data plane
    assert r.sent[0] == (b"IKE_SA_INIT", ("127.0.0.2", 500))
    assert list(r.dataplane.installed) == [0xC0000001]
    stats = await r.client.stats()
    assert stats["ike_sas"] == {"ESTABLISHED": 1} and stats["child_sas"] == 1
    assert stats["handshakes"] == 1 and stats["dataplane"] == "none"


async def test_list_conns(r: Running) -> None:
    (conn,) = await r.client.list_conns()
    assert conn["name"] == "east" and conn["start_action"] == "start"
    assert (
        conn["local_id"] == "gw-west" and conn["ike_proposals"][0] == "aes256gcm16-prfsha384-x25519"
    )
    assert conn["children"][0]["local_ts"] == ["10.1.0.0/24"]
    assert SECRET not in repr(conn)


async def test_initiate_waits_for_the_outcome_and_refuses_unknown_names(r: Running) -> None:
    await established(r)
    result = await r.client.initiate("east.net", timeout=5)
    assert result["message"] == "initiate east.net: established"
    assert result["sa"]["children"][0]["state"] == "INSTALLED"
    assert len(await r.client.list_sas()) == 2
    with pytest.raises(ControlError) as info:
        await r.client.initiate("west")
    assert (info.value.code, info.value.message) == (
        "unknown-connection",
        "no connection named 'west'",
    )
    with pytest.raises(ControlError, match="has no child 'nope'"):
        await r.client.initiate("east.nope")


async def test_terminate_child_then_ike(r: Running) -> None:
    await established(r)
    events = await r.client.subscribe()
    result = await r.client.terminate("east.net", timeout=5)
    assert result["message"] == "terminate east.net: 1 Child SA(s) deleted"
    assert r.dataplane.removed == [0xC0000001] and not r.dataplane.installed
    (sa,) = await r.client.list_sas()
    assert sa["children"] == []
    with pytest.raises(ControlError) as info:
        await r.client.terminate("east.net")
    assert info.value.code == "unknown-sa"
    result = await r.client.terminate("east", timeout=5)
    assert await r.client.list_sas() == []
    with pytest.raises(ControlError) as info:
        await r.client.terminate("east")
    assert info.value.code == "unknown-sa"
    types = []
    async for event in events:
        types.append(event["type"])
        if event["type"] == "ike-deleted":
            break
    assert types == ["child-deleted", "ike-deleted"]


async def test_install_failure_deletes_the_child_and_reports(r: Running) -> None:
    await established(r)
    events = await r.client.subscribe()
    r.dataplane.fail_next = True
    with pytest.raises(ControlError) as info:  # the Child never becomes INSTALLED
        await r.client.initiate("east.net", timeout=5)
    assert info.value.message == (
        "initiate east.net: Child SA net failed: install failed: "
        "NEWSA: Requested AEAD algorithm not found"
    )
    assert ("delete_child", 2, 0xC0000003) in r.engine.calls
    event = await asyncio.wait_for(anext(events), 5)
    assert event["type"] == "ike-established"
    event = await asyncio.wait_for(anext(events), 5)
    assert event["type"] == "error" and "Requested AEAD algorithm not found" in event["message"]
    assert (await r.client.stats())["install_failures"] == 1


async def test_child_sas_of_one_round_are_installed_in_one_batch(r: Running) -> None:
    """A burst: four peers complete in the same engine turn. Their Child SAs reach the
    data plane in one install_many; the one it refuses alone is failed, deleted with its
    peer and counted, the others are installed and recorded; one that follows a delete
    in the same round is not batched past it."""
    await established(r)
    events = await r.client.subscribe()
    first = r.engine.next_spi
    spis = [first + 2 * i for i in range(4)]
    r.dataplane.refuse = {spis[2]}
    for _ in spis:  # all four complete at the fake engine's next timer: one pump round
        r.daemon.engine_call(r.engine.initiate, "east", None)
    r.daemon.pump()
    for _ in range(200):
        if ("delete_child", 4, spis[2]) in r.engine.calls:
            break
        await asyncio.sleep(0.01)
    assert r.dataplane.batches == [spis]
    assert ("delete_child", 4, spis[2]) in r.engine.calls
    assert sorted(r.dataplane.installed) == sorted([0xC0000001] + spis[:2] + spis[3:])
    sas = await r.client.list_sas()
    installed = {c["spi_in"] for sa in sas for c in sa["children"]}
    assert installed == {f"{s:08x}" for s in [0xC0000001] + spis[:2] + spis[3:]}
    stats = await r.client.stats()
    assert (stats["install_batches"], stats["install_failures"]) == (1, 1)
    seen = [await asyncio.wait_for(anext(events), 5) for _ in range(9)]
    errors = [e for e in seen if e["type"] == "error"]
    assert len(errors) == 1 and "Requested AEAD algorithm not found" in errors[0]["message"]
    assert len([e for e in seen if e["type"] == "child-established"]) == 3

    # a round [established, deleted, established, established]: the batch stops at the
    # delete, the installs after it go one by one in order
    (old,) = [sa for sa in sas if sa["ike_sa"] == 1]
    r.dataplane.batches.clear()
    r.dataplane.singles.clear()
    r.dataplane.refuse = set()
    for _ in range(3):
        r.daemon.engine_call(r.engine.initiate, "east", None)
    r.engine.handle_timer(0.0)
    fresh = [e for e in r.engine.events if type(e).__name__ == "ChildSaEstablished"]
    r.engine.delete_child_sa(1, int(old["children"][0]["spi_in"], 16), 0.0)
    deleted = r.engine.events.pop()
    r.engine.events.insert(2, deleted)  # after the first peer's IKE SA + Child SA
    r.daemon.pump()
    assert r.dataplane.batches == []  # one install before the delete: nothing to batch
    assert r.dataplane.singles == [e.spi_in for e in fresh]
    assert 0xC0000001 in r.dataplane.removed


async def test_incremental_list_sas_answers_from_the_cursor(r: Running) -> None:
    """list-sas with `since`: the whole table first, then only what changed (rows of
    changed IKE SAs, removed handles, counters of the others); a cursor the daemon
    cannot answer from (another run, older than the removals it keeps, from the
    future) gets the whole table again; a malformed one is a bad request."""
    await established(r)
    first = await r.client.sa_changes(None)
    assert first["full"] is True and [sa["ike_sa"] for sa in first["sas"]] == [1]
    assert first["removed"] == [] and first["counters"] == []
    cursor = {"epoch": first["epoch"], "version": first["version"]}
    quiet = await r.client.sa_changes(cursor)
    assert (quiet["full"], quiet["sas"], quiet["removed"]) == (False, [], [])
    assert quiet["counters"] == [[1, "c0000001", 0, 0, 0, 0]]
    assert quiet["version"] == cursor["version"]

    await r.client.initiate("east", timeout=5)  # IKE SA 2 comes
    grown = await r.client.sa_changes(cursor)
    assert not grown["full"] and [sa["ike_sa"] for sa in grown["sas"]] == [2]
    assert grown["sas"][0]["children"][0]["spi_in"] == "c0000003"
    assert grown["counters"] == [[1, "c0000001", 0, 0, 0, 0]]
    cursor = {"epoch": grown["epoch"], "version": grown["version"]}
    await r.client.terminate("east.net", timeout=5)  # both Child SAs go: both rows change
    await r.client.terminate("east", timeout=5)  # both IKE SAs go
    gone = await r.client.sa_changes(cursor)
    assert not gone["full"] and gone["sas"] == [] and sorted(gone["removed"]) == [1, 2]
    assert gone["counters"] == []
    table = r.daemon.sas

    for stale in (
        {"epoch": "another-run", "version": 1},
        {"epoch": table.epoch, "version": table.version + 5},
    ):
        assert (await r.client.sa_changes(stale))["full"] is True
    table.REMOVALS_KEPT = 1  # type: ignore[misc]
    await r.client.initiate("east", timeout=5)
    await r.client.terminate("east", timeout=5)
    assert table.forgotten > cursor["version"]
    assert (await r.client.sa_changes(cursor))["full"] is True
    for bad in ({"epoch": 1, "version": 1}, {"version": 1}, {"epoch": "x", "version": -1}, 5):
        with pytest.raises(ControlError) as info:
            await r.client.sa_changes(bad)  # type: ignore[arg-type]
        assert info.value.code == "bad-request" and "'since' must be" in info.value.message


async def test_failed_authentication_is_a_failed_initiate(r: Running, tmp_path: Path) -> None:
    await established(r)
    r.path.write_text(
        config_text(Path(r.daemon.config.gateway.control_socket))
        + '\n[connections.bad]\nremote_addrs = ["127.0.0.3"]\n'
        'local = { auth = "psk" }\nremote = { auth = "psk" }\n'
        f'psk = "{SECRET}"\n[connections.bad.children.c]\n'
    )
    assert (await r.client.reload())["added"] == ["bad"]
    with pytest.raises(ControlError) as info:
        await r.client.initiate("bad", timeout=5)
    assert info.value.message == "initiate bad: AUTHENTICATION_FAILED"
    assert (await r.client.stats())["auth_failures"] == 1


async def test_reload_applies_only_changes(r: Running) -> None:
    (before,) = await established(r)
    sock = r.daemon.config.gateway.control_socket
    r.path.write_text(
        config_text(Path(sock))
        + '\n[connections.south]\nremote_addrs = ["127.0.0.4"]\nlocal_addrs = ["127.0.0.1"]\n'
        'local = { auth = "psk" }\nremote = { auth = "psk" }\n'
        f'psk = "{SECRET}"\n[connections.south.children.s]\nstart_action = "start"\n'
    )
    result = await r.client.reload()
    assert result == {
        "added": ["south"],
        "removed": [],
        "changed": [],
        "unchanged": ["east"],
        "restart_needed": False,
    }
    sas = await established(r, 2)
    assert [s["ike_sa"] for s in sas if s["connection"] == "east"] == [before["ike_sa"]]

    # change east (rekey_time), drop south: east's SA is replaced, south's deleted
    r.path.write_text(config_text(Path(sock), rekey="2h"))
    result = await r.client.reload()
    assert (result["changed"], result["removed"], result["added"]) == (["east"], ["south"], [])
    sas = await established(r, 1)
    assert [s["connection"] for s in sas] == ["east"] and sas[0]["ike_sa"] != before["ike_sa"]
    assert ("set_connections", ("east",)) in r.engine.calls


async def test_bad_reload_keeps_the_running_config(r: Running) -> None:
    await established(r)
    r.path.write_text('[gateway]\ndataplane = "dpdk"\n')
    with pytest.raises(ControlError) as info:
        await r.client.reload()
    assert info.value.code == "failed"
    assert "reload refused, configuration unchanged" in info.value.message
    assert "gateway.dataplane" in info.value.message
    assert [c["name"] for c in await r.client.list_conns()] == ["east"]
    assert len(await r.client.list_sas()) == 1


async def test_rekey_refuses_unknown_names(r: Running) -> None:
    # rekeying itself: tests/unit/test_daemon_rekey.py (real engines)
    await established(r)
    with pytest.raises(ControlError) as info:
        await r.client.rekey("nowhere")
    assert info.value.code == "unknown-connection"


async def start_daemon(
    tmp_path: Path, **kwargs: str
) -> tuple[Daemon, FakeEngine, RecordingDataplane, list[Any]]:
    config = parse_config(config_text(tmp_path / "c.sock", **kwargs))

    engine = FakeEngine([engine_connection(c) for c in config.connections])
    dataplane = RecordingDataplane()
    daemon = Daemon(config, dataplane=dataplane, engine=engine)
    sent: list[Any] = []
    daemon.transport.send = lambda data, local, remote: _capture(sent, data)  # type: ignore[method-assign]
    await daemon.start()
    for _ in range(100):
        if dataplane.installed:
            break
        await asyncio.sleep(0.01)
    return daemon, engine, dataplane, sent


@pytest.mark.parametrize("action", ["clear", "restart"])
async def test_dead_peer_detection(tmp_path: Path, action: str) -> None:
    """The engine detects the dead peer (ike/, tests/unit/ike/test_dpd.py); the daemon
    publishes it, removes the SAs and carries out the Child's dpd_action."""
    daemon, engine, dataplane, _ = await start_daemon(
        tmp_path, conn_extra='dpd_delay = "0.1s"', child_extra=f'dpd_action = "{action}"'
    )
    try:
        assert engine.connections["east"].dpd_delay == 0.1  # the engine does the checks
        assert engine.connections["east"].children[0].dpd_action == action
        client = await ControlClient.connect(tmp_path / "c.sock")
        events = await client.subscribe()
        engine.peer_dies(1, daemon.clock())
        daemon.pump()
        seen = []
        async for event in events:
            seen.append(event)
            if event["type"] == "ike-deleted":
                break
        assert [e["type"] for e in seen] == ["child-deleted", "dpd-failed", "ike-deleted"]
        assert seen[1]["actions"] == {"net": action} and seen[1]["remote_addr"] == "127.0.0.2"
        assert dataplane.removed == [0xC0000001]
        assert (await client.stats())["dpd_failures"] == 1
        restarted = [c for c in engine.calls if c[0] == "initiate"]
        assert restarted == [("initiate", "east", "net")] * (2 if action == "restart" else 1)
        await client.close()
    finally:
        await daemon.shutdown()


async def test_dpd_reads_inbound_packets_from_the_data_plane(tmp_path: Path) -> None:
    """The engine's InboundTraffic hook: a Child SA's inbound packets from the data plane
    counters plus the XDP programs' (0 for an SPI the daemon does not have installed)."""
    daemon, _, dataplane, _ = await start_daemon(tmp_path)
    try:
        seen = {0xC0000001: 7}
        dataplane.counters = lambda installed, **_: Counters(packets_in=seen[installed.spi_in])  # type: ignore[method-assign]
        traffic = InboundTraffic(daemon.sas, daemon.features)
        assert traffic.packets_in(1, 0xC0000001) == 7
        seen[0xC0000001] = 9
        assert traffic.packets_in(1, 0xC0000001) == 9
        assert traffic.packets_in(1, 0x1234) == 0 and traffic.packets_in(99, 0xC0000001) == 0

        class Xdp:  # [gateway.xdp]: the programs' per-slot ESP count is added
            @staticmethod
            def child_counters(spi_in: int) -> dict[str, int] | None:
                return {"slot": 1, "esp_in_packets": 100} if spi_in == 0xC0000001 else None

        slots = XdpSlots(daemon, Xdp())  # type: ignore[arg-type]
        daemon.features.append(slots)  # as when [gateway.xdp] is configured
        assert traffic.packets_in(1, 0xC0000001) == 109
        daemon.features.remove(slots)
    finally:
        await daemon.shutdown()


async def test_shutdown_deletes_sas_and_tells_the_peer(tmp_path: Path) -> None:
    daemon, engine, dataplane, sent = await start_daemon(tmp_path)
    assert (tmp_path / "c.sock").exists() and dataplane.installed
    await daemon.shutdown()
    assert ("delete_ike", 1) in engine.calls
    assert sent == [b"IKE_SA_INIT", b"INFORMATIONAL-DELETE"]
    assert dataplane.removed == [0xC0000001] and not dataplane.installed
    assert not (tmp_path / "c.sock").exists() and daemon.sas == {}


async def test_kernel_expiry(r: Running) -> None:
    await established(r)
    events = await r.client.subscribe()
    r.daemon.expiry.expired(0xC0000002, hard=False)  # soft limit on the outbound state
    event = await asyncio.wait_for(anext(events), 5)
    assert (event["type"], event["spi"]) == ("child-expiring", "c0000002")
    assert ("delete_child", 1, 0xC0000001) not in r.engine.calls
    r.daemon.expiry.expired(0x12345678, hard=True)  # not ours: ignored
    r.daemon.expiry.expired(0xC0000001, hard=True)  # hard: deleted with the peer, removed here
    event = await asyncio.wait_for(anext(events), 5)
    assert (event["type"], event["spi_in"]) == ("child-deleted", "c0000001")
    assert ("delete_child", 1, 0xC0000001) in r.engine.calls
    (sa,) = await r.client.list_sas()
    assert sa["children"] == [] and r.dataplane.removed == [0xC0000001]


async def test_an_engine_bug_on_input_is_contained(r: Running) -> None:
    await established(r)

    def broken(data: bytes, addr: object, now: float) -> None:
        raise AttributeError("engine bug")

    r.engine.receive_datagram = broken  # type: ignore[method-assign]
    r.daemon.on_datagram(b"x" * 40, ("127.0.0.1", 500), ("127.0.0.2", 500))
    stats = await r.client.stats()
    assert stats["engine_errors"] == 1 and stats["ike_sas"] == {"ESTABLISHED": 1}


async def test_migrate_moves_the_child_sas_and_reports_it(r: Running) -> None:
    """`migrate`: the engine moves the IKE SA, the data plane each Child SA (MOBIKE)."""
    await established(r)
    (sa,) = await r.client.list_sas()
    assert sa["mobike"] is True and sa["additional_addrs"] == ["127.0.0.9"]
    r.daemon.transport.socket_for = lambda local: object()  # type: ignore[method-assign,assignment,return-value]
    events = await r.client.subscribe()
    result = await r.client.call(
        "migrate", {"name": "east", "local_addr": "127.0.0.1", "remote_addr": "127.0.0.3"}
    )
    assert result["message"] == "migrate east: 1 IKE SA(s) now on 127.0.0.1 - 127.0.0.3"
    assert ("update_addresses", 1, "127.0.0.1", "127.0.0.3") in r.engine.calls
    assert r.dataplane.migrations == [(0xC0000001, "127.0.0.1", "127.0.0.3", (4500, 4500))]
    (sa,) = await r.client.list_sas()
    assert (sa["remote_addr"], sa["remote_port"]) == ("127.0.0.3", 4500)
    assert sa["children"][0]["encap"] is True
    event = await asyncio.wait_for(anext(events), 5)
    assert event["type"] == "ike-migrated" and event["remote_addr"] == "127.0.0.3"
    assert event["old_remote_addr"] == "127.0.0.2" and event["encap"] is True
    # refused by the peer, not an address of this host, malformed, unknown
    with pytest.raises(ControlError, match="UNACCEPTABLE_ADDRESSES"):
        await r.client.call("migrate", {"name": "east", "remote_addr": "127.0.0.66"})
    with pytest.raises(ControlError, match="is not an address of this host"):
        await r.client.call("migrate", {"name": "east", "local_addr": "192.0.2.99"})
    with pytest.raises(ControlError, match="must be an IP address") as info:
        await r.client.call("migrate", {"name": "east", "local_addr": "here"})
    assert info.value.code == "bad-request"
    with pytest.raises(ControlError, match="no connection named"):
        await r.client.call("migrate", {"name": "west"})
    assert len(r.dataplane.migrations) == 1


@pytest.mark.parametrize(
    ("toml", "engine"),
    [("", "yes"), ('"no"', "no"), ("false", "no"), ('"accept"', "accept"), ('"force"', "yes")],
)
def test_fragmentation_key_reaches_the_engine(tmp_path: Path, toml: str, engine: str) -> None:
    extra = f"fragmentation = {toml}" if toml else ""
    config = parse_config(config_text(tmp_path / "c.sock", conn_extra=extra))
    assert engine_connection(config.connections[0]).fragmentation == engine
