"""gateway/dataplane/xdp.py: the daemon's XDP adapter, with a recording stand-in for the bcc loader.
Checks the SPI/slot bookkeeping (our inbound SPIs carry the slot; a rekey keeps the
Child's slot; slots come back when the last SA and SPI are gone), the loader calls per
engine event, the tunnel MTU from the suite, local selectors carved out of a wider remote
one, and clear errors for bad interface names. The real programs attached by a real
daemon are tested in tests/host/test_daemon_xdp.py."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from bpf.spi import slot_of_spi
from gateway.config.schema import XdpConfig
from gateway.dataplane.xdp import SlotSpis, XdpAdapter, runtime_settings
from gateway.errors import GatewayError
from ike.errors import SpiExhausted
from ike.ts import ts_from_text
from tests.support.xdp import FakeLoader, child


def adapter(loader: FakeLoader, **config: Any) -> XdpAdapter:
    cfg = XdpConfig(**{"wan_interface": "lo", **config})
    spis = SlotSpis(slot_bits=4, random=random.Random(1).randbytes)
    a = XdpAdapter(cfg, loader=lambda c: loader, spis=spis, link_mtu=lambda name: 1500)
    a.open()
    return a


def test_spis_carry_their_slot_and_a_rekey_keeps_it() -> None:
    spis = SlotSpis(slot_bits=4, random=random.Random(2).randbytes)
    a, b = spis.allocate(), spis.allocate()
    assert {slot_of_spi(a, 4), slot_of_spi(b, 4)} == {0, 1} and a >= 256 and b >= 256
    again = spis.allocate(replaces=a)
    assert slot_of_spi(again, 4) == slot_of_spi(a, 4) and again != a
    assert len(spis) == 2
    spis.release(a)
    spis.release(again)
    assert len(spis) == 1  # slot 0 free again
    spis.release(again)  # a second release changes nothing
    assert len(spis) == 1


def test_spis_exhausted_is_the_engine_error_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the slot space the engine refuses the Child SA (TEMPORARY_FAILURE), never
    silently: one log line per run of refusals, and a counter for the metrics."""
    spis = SlotSpis(slot_bits=1, random=random.Random(3).randbytes)
    first, _ = spis.allocate(), spis.allocate()
    assert (spis.capacity, spis.end) == (2, 2)
    for _ in range(3):
        with pytest.raises(SpiExhausted):
            spis.allocate()
    lines = [r.getMessage() for r in caplog.records if "xdp-slots-exhausted" in r.getMessage()]
    assert len(lines) == 1 and "capacity=2" in lines[0] and "max_child_sas" in lines[0]
    assert spis.exhausted == 3
    spis.release(first)
    spis.allocate()  # a slot came back: the next refusal is logged again
    with pytest.raises(SpiExhausted):
        spis.allocate()
    assert spis.exhausted == 4
    assert sum("xdp-slots-exhausted" in r.getMessage() for r in caplog.records) == 2


def test_slot_bits_follow_max_child_sas_and_settings_reach_the_loader() -> None:
    """[gateway.xdp] keys become the loader's settings: the slot space, steering (a CPU
    set or "all"), unknown-SPI drop and the shield (burst defaults: one second's worth)."""
    from bpf.loader import IkeShield

    cfg = XdpConfig(
        wan_interface="lo",
        max_child_sas=1 << 20,
        steer_cpus="all",
        drop_unknown_spi=True,
        ike_init_rate=2.5,
        ike_init_budget=100,
    )
    assert XdpAdapter(cfg, loader=lambda c: FakeLoader()).spis.slot_bits == 20
    settings = runtime_settings(cfg)
    assert settings["drop_unknown_spi"] is True
    assert settings["steer_cpus"] == tuple(sorted(os.sched_getaffinity(0)))
    assert settings["ike_shield"] == IkeShield(rate=2.5, burst=3, budget_rate=100, budget_burst=100)
    assert runtime_settings(XdpConfig(wan_interface="lo"))["ike_shield"] is None
    only_budget = runtime_settings(XdpConfig(wan_interface="lo", ike_init_budget=5))
    assert only_budget["ike_shield"] == IkeShield(rate=None, budget_rate=5, budget_burst=5)
    loader = FakeLoader()
    a = adapter(loader)
    a.update_settings(XdpConfig(wan_interface="lo", steer_cpus=(0,), drop_unknown_spi=True))
    assert loader.settings["steer_cpus"] == (0,) and loader.settings["drop_unknown_spi"]
    assert a.steered() == {1: 7}
    assert a.slot_usage() == {"used": 0, "capacity": 16, "exhausted": 0}


def test_established_rekeyed_deleted() -> None:
    loader = FakeLoader()
    a = adapter(loader)
    assert loader.opened
    spi_in = a.spis.allocate()
    placed = a.child_established(child(spi_in, 0x1000), offloaded=False)
    assert placed is not None and placed.slot == slot_of_spi(spi_in, 4)
    # AES-GCM-16 over IPv4 on a 1500 link: 1446 (bpf/mtu.py)
    assert loader.calls == [("install", placed.slot, spi_in, 0x1000, ("10.2.0.0/24",), 1446, False)]

    new_in = a.spis.allocate(replaces=spi_in)
    again = a.child_rekeyed(spi_in, child(new_in, 0x2000), offloaded=False)
    assert again == placed and a.slot(new_in) == placed.slot
    assert loader.calls[-1][:4] == ("install", placed.slot, new_in, 0x2000)

    a.child_deleted(spi_in)  # the old SA: only its SPIs go
    assert loader.calls[-1] == ("remove_spis", spi_in, 0x1000)
    counters = a.child_counters(new_in)
    assert counters is not None and counters["slot"] == placed.slot
    assert counters["esp_in_packets"] == placed.slot + 1 and counters["clear_to_tunnel_bytes"] == 0
    final = a.child_deleted(new_in)  # the last one: slot and prefixes go, final counts
    assert loader.calls[-1] == ("remove", placed.slot, new_in, 0x2000, ("10.2.0.0/24",))
    assert final is not None and (final.connection, final.child) == ("east", "net")
    assert final.counters.esp_in_packets == placed.slot + 1
    a.spis.release(spi_in)
    a.spis.release(new_in)
    assert len(a.spis) == 0
    a.child_deleted(new_in)  # unknown now: nothing happens
    assert loader.calls[-1][0] == "remove"


def test_rekey_without_the_hint_keeps_the_childs_slot() -> None:
    loader = FakeLoader()
    a = adapter(loader)
    old = a.spis.allocate()
    placed = a.child_established(child(old, 0x1000), offloaded=False)
    new = a.spis.allocate()  # the engine did not say which SA it replaces
    assert slot_of_spi(new, 4) != slot_of_spi(old, 4)
    a.child_rekeyed(old, child(new, 0x2000), offloaded=False)
    assert placed is not None and a.slot(new) == placed.slot  # loader: fallback map


def test_foreign_spi_gets_a_slot_and_ipv6_nat_mtu() -> None:
    loader = FakeLoader()
    a = adapter(loader)
    e = child(
        0xC0000001,
        0x1000,
        local_addr="2001:db8::1",
        encap=(4500, 4500),
        remote_ts=(ts_from_text("2001:db8:2::/64"),),
        local_ts=(ts_from_text("2001:db8:1::/64"),),
    )
    placed = a.child_established(e, offloaded=True)
    assert placed is not None
    # 1500 - 40 (IPv6) - 8 (UDP) - 8 - 8 (IV) - 16 (ICV) = 1420, - 2 = 1418
    assert loader.calls[-1] == (
        "install",
        placed.slot,
        0xC0000001,
        0x1000,
        ("2001:db8:2::/64",),
        1418,
        True,
    )
    a.child_deleted(0xC0000001)
    assert len(a.spis) == 0


def test_local_selectors_inside_a_remote_one_are_carved_out() -> None:
    loader = FakeLoader()
    a = adapter(loader)
    wide = {"remote_ts": (ts_from_text("0.0.0.0/0"),)}
    s1, s2 = a.spis.allocate(), a.spis.allocate()
    a.child_established(child(s1, 0x1000, **wide), offloaded=False)
    a.child_established(child(s2, 0x2000, **wide), offloaded=False)
    assert [c for c in loader.calls if c[0] == "exclude"] == [("exclude", "10.1.0.0/24")]
    a.child_deleted(s1)
    assert ("unexclude", "10.1.0.0/24") not in loader.calls  # the other Child still needs it
    a.child_deleted(s2)
    assert loader.calls[-1] == ("unexclude", "10.1.0.0/24")


def test_route_based_childs_lan_prefixes_are_its_routes() -> None:
    """Two route-based Childs with 0.0.0.0/0 selectors: each gets its routes as LAN
    prefixes (none: only its ESP, by SPI), nothing is carved out, and neither takes the
    other's LAN traffic."""
    loader = FakeLoader()
    a = adapter(loader)
    wide = {
        "remote_ts": (ts_from_text("0.0.0.0/0"),),
        "local_ts": (ts_from_text("0.0.0.0/0"),),
    }
    s1, s2 = a.spis.allocate(), a.spis.allocate()
    a.child_established(child(s1, 0x1000, **wide), offloaded=False, lan_prefixes=("10.2.0.0/24",))
    a.child_established(child(s2, 0x2000, **wide), offloaded=False, lan_prefixes=())
    installs = [c for c in loader.calls if c[0] == "install"]
    assert [c[4] for c in installs] == [("10.2.0.0/24",), ()]
    assert not [c for c in loader.calls if c[0] == "exclude"]
    a.child_rekeyed(s1, child(a.spis.allocate(), 0x3000, **wide), offloaded=False)
    assert [c for c in loader.calls if c[0] == "install"][-1][4] == ("10.2.0.0/24",)


def test_child_ended_takes_an_old_sa_in_its_grace_along() -> None:
    """The Child SA ends while its rekeyed-away SA waits for its grace: both SPIs and
    the slot go now, with the slot's final counts; the grace's later call is a no-op."""
    loader = FakeLoader()
    a = adapter(loader)
    old = a.spis.allocate()
    placed = a.child_established(child(old, 0x1000), offloaded=False)
    assert placed is not None
    new = a.spis.allocate(replaces=old)
    a.child_rekeyed(old, child(new, 0x2000), offloaded=False)
    table = a.slot_table(a.spis.end)
    assert table.column("esp_in_packets")[placed.slot] == placed.slot + 1
    final = a.child_ended(new)
    assert final is not None and final.counters.esp_in_packets == placed.slot + 1
    assert [c[0] for c in loader.calls[-2:]] == ["remove_spis", "remove"]
    assert a.child_deleted(old) is None and a.known_spis() == []
    a.spis.release(old)
    a.spis.release(new)
    assert len(a.spis) == 0


def test_install_failure_is_logged_and_gives_the_slot_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loader = FakeLoader(fail_install=True)
    a = adapter(loader)
    spi = a.spis.allocate()
    assert a.child_established(child(spi, 0x1000), offloaded=False) is None
    assert "event=xdp-install-failed connection=east child=net" in caplog.text
    a.spis.release(spi)
    assert len(a.spis) == 0


def test_counters_for_stats_and_metrics_then_close() -> None:
    loader = FakeLoader()
    a = adapter(loader, lan_interface="lo")
    assert a.verdict_rows() == [
        {"interface": "lo", "action": "pass", "reason": "ike", "packets": 4}
    ]
    assert a.mss_clamped() == {"lan0": 2}
    a.close()
    a.close()
    assert loader.calls.count(("close",)) == 1
    assert a.verdict_rows() == [] and a.mss_clamped() == {}


@pytest.mark.parametrize("key", ["wan_interface", "lan_interface"])
def test_bad_interface_name_fails_before_compiling(key: str) -> None:
    made: list[XdpConfig] = []

    def loader(config: XdpConfig) -> FakeLoader:
        made.append(config)
        return FakeLoader()

    names = {"wan_interface": "lo", key: "nosuch0"}
    cfg = XdpConfig(names["wan_interface"], names.get("lan_interface"))
    a = XdpAdapter(cfg, loader=loader)
    with pytest.raises(GatewayError) as err:
        a.open()
    assert str(err.value) == f"[gateway.xdp] {key} = 'nosuch0': no such network interface"
    assert made == [] and not a.attached
