"""Rekeying through two daemons with real IKE engines joined in memory (datagrams handed
from one daemon's transport to the other's input) and recording `none` data planes:
`rekey conn.child` / `rekey conn` from the control API, a kernel soft expiry, the
make-before-break calls into the data plane (replace keeping the old inbound SA, retire
after the Delete) and the events. The same against strongSwan: tests/host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.client import ControlClient
from gateway.control.protocol import ControlError
from gateway.daemon import core as daemon_core
from tests.support.fake_engine import RecordingDataplane
from tests.support.inmemory import Pair, started_pair


@pytest.fixture
async def pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pair[RecordingDataplane]]:
    monkeypatch.setattr(daemon_core, "REKEY_GRACE", 0.05)
    async with started_pair(tmp_path, RecordingDataplane(), RecordingDataplane()) as pair:
        yield pair


async def child_spis(client: ControlClient) -> tuple[str, str]:
    for _ in range(300):
        sas = await client.list_sas()
        if sas and sas[0]["state"] == "ESTABLISHED" and sas[0]["children"]:
            c = sas[0]["children"][0]
            return c["spi_in"], c["spi_out"]
        await asyncio.sleep(0.01)
    raise AssertionError(f"not established: {sas}")


async def wait_for(what: str, cond: Any) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_child_rekey_from_the_control_api_is_make_before_break(
    pair: Pair[RecordingDataplane],
) -> None:
    old_in, old_out = await child_spis(pair.client)
    events = await pair.client.subscribe()
    result = await pair.client.rekey("east.net", timeout=5)
    assert "1 Child SA(s) rekeyed" in result["message"]
    new_in, new_out = await child_spis(pair.client)
    assert (new_in, new_out) != (old_in, old_out)
    seen = []
    async for event in events:
        seen.append(event)
        if event["type"] == "child-rekeyed":
            break
    assert (seen[-1]["old_spi_in"], seen[-1]["spi_in"]) == (old_in, new_in)
    # west (rekey initiator): the new pair replaced the old one keeping the old inbound
    # SA, which goes after the Delete of the old SA (+ REKEY_GRACE); east (responder)
    # added the new inbound SA only and switched its outbound SA when west's Delete came
    assert pair.dp_west.calls[0] == ("replace", int(old_in, 16), int(new_in, 16), True, True)
    await wait_for("retire", lambda: ("retire", int(old_in, 16)) in pair.dp_west.calls)
    await wait_for("east retire", lambda: ("retire", int(old_out, 16)) in pair.dp_east.calls)
    assert pair.dp_east.calls == [
        ("replace", int(old_out, 16), int(new_out, 16), True, False),
        ("switch", int(old_in, 16), int(new_in, 16)),
        ("retire", int(old_out, 16)),
    ]
    assert set(pair.dp_west.installed) == {int(new_in, 16)}
    assert set(pair.dp_east.installed) == {int(new_out, 16)}
    assert not pair.west.children.retiring_spis() and not pair.east.children.retiring_spis()
    stats = await pair.client.stats()
    assert stats["rekeys"] == 1 and stats["child_sas"] == 1


async def test_ike_rekey_keeps_the_child(pair: Pair[RecordingDataplane]) -> None:
    spis = await child_spis(pair.client)
    (before,) = await pair.client.list_sas()
    await pair.client.rekey("east", timeout=5)
    (after,) = await pair.client.list_sas()
    assert (after["spi_i"], after["spi_r"]) != (before["spi_i"], before["spi_r"])
    assert after["ike_sa"] == before["ike_sa"] and after["state"] == "ESTABLISHED"
    assert await child_spis(pair.client) == spis
    (east_sa,) = pair.east.list_sas()
    assert (east_sa["spi_i"], east_sa["spi_r"]) == (after["spi_i"], after["spi_r"])
    assert (after["initiator"], east_sa["initiator"]) == (True, False)
    # the rekeyed IKE SA carries a Child rekey started by the other side
    east_client = await ControlClient.connect(pair.east.config.gateway.control_socket)
    try:
        await east_client.rekey("east.net", timeout=5)
        assert await child_spis(pair.client) != spis
        # east rekeys the IKE SA: it is the new SA's original initiator (RFC 7296
        # §2.18), and list-sas says so on both sides
        await east_client.rekey("east", timeout=5)
    finally:
        await east_client.close()
    (west_sa,), (east_sa,) = await pair.client.list_sas(), pair.east.list_sas()
    assert (west_sa["spi_i"], west_sa["spi_r"]) == (east_sa["spi_i"], east_sa["spi_r"])
    assert (west_sa["initiator"], east_sa["initiator"]) == (False, True)


async def test_soft_expiry_rekeys_the_child(pair: Pair[RecordingDataplane]) -> None:
    old_in, _ = await child_spis(pair.client)
    pair.west.expiry.expired(int(old_in, 16), hard=False)  # as the kernel's soft byte limit
    await wait_for("a new inbound SPI", lambda: pair.west.totals.rekeys == 1)
    new_in, _ = await child_spis(pair.client)
    assert new_in != old_in


async def test_rekey_errors(pair: Pair[RecordingDataplane]) -> None:
    await child_spis(pair.client)
    with pytest.raises(ControlError) as info:
        await pair.client.rekey("nowhere")
    assert info.value.code == "unknown-connection"
    with pytest.raises(ControlError) as info:
        await pair.client.rekey("east.nochild")
    assert info.value.code in ("unknown-connection", "unknown-sa")


async def test_list_sas_shows_the_engines_lifetimes(pair: Pair[RecordingDataplane]) -> None:
    await child_spis(pair.client)
    (sa,) = await pair.client.list_sas()
    (child,) = sa["children"]
    # defaults: IKE rekey 4 h minus up to 24 min, hard at 4 h 24 min; Child 1 h minus up
    # to 6 min, hard at 66 min (gateway/config/schema.py, docs/config.md)
    assert 14400 - 1440 <= sa["rekey_at"] - sa["established_at"] <= 14400
    assert sa["expire_at"] - sa["established_at"] == pytest.approx(15840)
    assert 3600 - 360 <= child["rekey_at"] - child["installed_at"] <= 3600
    assert child["expire_at"] - child["installed_at"] == pytest.approx(3960)
    await pair.client.rekey("east.net", timeout=5)
    await pair.client.rekey("east", timeout=5)
    (after,) = await pair.client.list_sas()
    (new_child,) = after["children"]
    assert new_child["spi_in"] != child["spi_in"]
    assert 3600 - 360 <= new_child["rekey_at"] - new_child["installed_at"] <= 3600
    assert new_child["expire_at"] - new_child["installed_at"] == pytest.approx(3960)
    # the new IKE SA's lifetimes start at its rekey (now), not at the first set-up
    assert after["rekey_at"] != sa["rekey_at"] and after["expire_at"] > sa["expire_at"]


@pytest.mark.parametrize("what", ["child", "ike"])
async def test_simultaneous_rekeys_leave_one_installed_pair(pair: Pair, what: str) -> None:
    """Both daemons rekey the same SA at the same moment (RFC 7296 §2.8.1/§2.8.2): after
    the collision is settled each data plane holds exactly one SA pair, the same one, and
    every old inbound SA kept for in-flight packets has been retired."""
    old_in, old_out = await child_spis(pair.client)
    for d in (pair.west, pair.east):
        (record,) = d.sas.values()
        if what == "child":
            d.engine.rekey_child_sa(record.ike_sa, record.children[0].spi_in, d.clock())
        else:
            d.engine.rekey_ike_sa(record.ike_sa, d.clock())
    pair.west.pump()
    pair.east.pump()

    def settled() -> bool:
        w, e = pair.dp_west.installed, pair.dp_east.installed
        if (
            len(w) != 1
            or len(e) != 1
            or pair.west.children.retiring_spis()
            or pair.east.children.retiring_spis()
        ):
            return False
        (wi,) = w.values()
        (ei,) = e.values()
        if what == "child" and wi.spi_in == int(old_in, 16):
            return False  # not even started
        return (wi.spi_in, wi.spi_out) == (ei.spi_out, ei.spi_in)

    await wait_for("one SA pair", settled)
    new_in, new_out = await child_spis(pair.client)
    (installed,) = pair.dp_west.installed.values()
    assert int(new_in, 16) == installed.spi_in
    if what == "child":
        assert new_in != old_in and pair.west.totals.rekeys >= 1
    else:
        assert new_in == old_in and pair.west.totals.ike_rekeys >= 1
    (w,) = pair.west.list_sas()
    (e,) = pair.east.list_sas()
    assert (w["spi_i"], w["spi_r"]) == (e["spi_i"], e["spi_r"])
    assert len(w["children"]) == len(e["children"]) == 1
