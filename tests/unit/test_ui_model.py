"""The console's data model: rows from list-sas/list-conns, rates from counter deltas,
in-place updates, filtering, sorting, formatting and redaction. No Textual here."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.observability import child_sa, ike_sa, synthetic_ike_sas
from ui.model import SaModel, cell, duration, format_event, human, human_bytes, redact

NOW = 1_700_000_000.0


def names(model: SaModel) -> list[str]:
    return [r.name for r in model.view]


def test_rows_for_children_bare_ike_sas_and_idle_connections() -> None:
    sas = synthetic_ike_sas(3)
    sas.append(ike_sa("rw", 9, [], state="CONNECTING"))
    conns: list[dict[str, Any]] = [
        {"name": "conn-0"},
        {"name": "idle", "remote_addrs": ["203.0.113.9"]},
    ]
    m = SaModel()
    m.update(sas, conns, NOW)
    assert names(m) == ["conn-0.net-0", "conn-0.net-1", "conn-1.net-0", "idle", "rw"]
    idle = next(r for r in m.view if r.connection == "idle")
    assert (idle.kind, idle.state, idle.peer) == ("conn", "down", "203.0.113.9")
    rw = next(r for r in m.view if r.connection == "rw")
    assert (rw.kind, rw.state, cell(rw, "child", NOW)) == ("ike", "CONNECTING", "(IKE)")


def test_rates_from_counter_deltas_and_rows_updated_in_place() -> None:
    m = SaModel()
    m.update(synthetic_ike_sas(2, tick=1), [], NOW)
    first = m.view[0]
    assert first.bps_in == 0  # one sample: no rate yet
    m.update(synthetic_ike_sas(2, tick=11), [], NOW + 10)
    assert m.view[0] is first  # same object: updated, not rebuilt
    # index 0 moves 1000 bytes/tick in, 500 out: 10 ticks in 10 s
    assert first.bps_in == pytest.approx(1000 * 8)
    assert first.bps_out == pytest.approx(500 * 8)
    assert first.pps_in == pytest.approx(1.0)
    assert list(first.history_in) == [pytest.approx(8000)]
    assert cell(first, "bps_in", NOW) == "8.0 k"
    assert cell(first, "bytes_in", NOW) == "10.7 KiB"


def test_counter_reset_gives_zero_rate_not_negative() -> None:
    m = SaModel()
    m.update([ike_sa("c", 1, [child_sa("n", 1, tick=50)])], [], NOW)
    m.update([ike_sa("c", 1, [child_sa("n", 1, tick=2)])], [], NOW + 1)
    assert m.view[0].bps_in == 0 and m.view[0].pps_out == 0


def test_rekeyed_child_is_a_new_row_and_the_old_one_goes() -> None:
    m = SaModel()
    m.update([ike_sa("c", 1, [child_sa("n", 1, tick=5)])], [], NOW)
    old = m.view[0]
    m.update([ike_sa("c", 1, [child_sa("n", 2, tick=1)])], [], NOW + 1)
    assert len(m.view) == 1 and m.view[0] is not old and m.view[0].spi_in == "c0000002"


def test_filter_matches_connection_peer_id_state_and_ts() -> None:
    m = SaModel()
    sas = synthetic_ike_sas(6)
    sas[1]["children"][0]["state"] = "REKEYING"
    m.update(sas, [], NOW)
    m.set_filter("conn-2")
    assert names(m) == ["conn-2.net-0", "conn-2.net-1"]
    m.set_filter("PEER1.example")  # remote id, case-insensitive
    assert names(m) == ["conn-1.net-0", "conn-1.net-1"]
    m.set_filter("rekeying")
    assert names(m) == ["conn-1.net-0"]
    m.set_filter("10.1.0.5/32")  # remote traffic selector
    assert names(m) == ["conn-2.net-1"]
    m.set_filter("")
    assert len(m.view) == 6


def test_sort_by_rate_follows_the_values_at_every_poll() -> None:
    m = SaModel()
    m.update(synthetic_ike_sas(4, tick=0), [], NOW)
    m.set_sort("bps_in", reverse=True)
    m.update(synthetic_ike_sas(4, tick=1), [], NOW + 1)
    assert names(m)[0] == "conn-1.net-1"  # index 3: highest rate
    m.set_sort("bps_in")  # same column again: flips the order
    assert m.sort_reverse is False and names(m)[0] == "conn-0.net-0"
    with pytest.raises(ValueError):
        m.set_sort("nope")


def test_malformed_list_sas_entries_are_skipped_or_zeroed() -> None:
    bad_child: dict[str, Any] = {"name": "x", "spi_in": 7, "bytes_in": "lots", "rekey_at": "soon"}
    sas: list[Any] = [None, {"connection": "c", "spi_i": "1", "children": [bad_child, 5]}]
    m = SaModel()
    conns: list[Any] = [None, {"name": ""}]
    m.update(sas, conns, NOW)
    assert names(m) == ["c.x"]
    row = m.view[0]
    assert row.bytes_in == 0 and row.rekey_at is None and cell(row, "rekey", NOW) == "-"


def test_formatting() -> None:
    assert human(0) == "0"
    assert human(999) == "999"
    assert human(1_234_567, "b/s") == "1.2 Mb/s"
    assert human(250_000_000_000) == "250 G"
    assert human_bytes(1536) == "1.5 KiB"
    assert duration(None) == "-"
    assert duration(-5) == "0s"
    assert duration(61) == "1m01s"
    assert duration(3 * 3600 + 300) == "3h05m"
    assert duration(2 * 86400 + 4 * 3600) == "2d04h"


def test_event_lines_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    line = format_event(
        {
            "type": "child-established",
            "time": 0.0,
            "connection": "c",
            "child": "net",
            "encr_key": "00ff",
            "psk": "hunter2",
            "SK_ei": "aa",
            "rekey_at": 5,
        }
    )
    assert line == "00:00:00 child-established c child=net rekey_at=5"
    assert redact({"nonce_i": 1, "private_key": 2, "peer": 3}) == {"peer": 3}


def test_a_peer_that_moves_is_followed_in_place() -> None:
    m = SaModel()
    sas = synthetic_ike_sas(2)
    m.update(sas, [], NOW)
    row = m.view[0]
    sas[0]["remote_addr"] = "203.0.113.77"  # MOBIKE update
    m.update(sas, [], NOW + 1)
    assert m.view[0] is row and row.peer == "203.0.113.77"
    m.set_filter("203.0.113.77")
    assert [r.name for r in m.view] == ["conn-0.net-0", "conn-0.net-1"]


def test_ike_sa_view_sums_children_and_keeps_idle_rows() -> None:
    m = SaModel()
    sas = synthetic_ike_sas(4, tick=0)
    sas.append(ike_sa("rw", 9, [], state="CONNECTING"))
    m.update(sas, [{"name": "idle"}], NOW)
    m.set_group("ike")
    m.set_group("ike")  # twice: still the sums, not doubled
    assert names(m) == ["conn-0", "conn-1", "idle", "rw"]
    assert [r.kind for r in m.view] == ["ikesa", "ikesa", "conn", "ike"]
    m.update(synthetic_ike_sas(4, tick=10) + [sas[-1]], [{"name": "idle"}], NOW + 10)
    conn0 = m.view[0]
    assert (conn0.children, cell(conn0, "child", NOW)) == (2, "2 children")
    # children index 0 and 1: 1000 and 1100 bytes/tick in, 10 ticks in 10 s
    assert conn0.bytes_in == 21_000 and conn0.bps_in == pytest.approx(2100 * 8)
    assert list(conn0.history_in) == [pytest.approx(2100 * 8)]
    assert conn0.rekey_at == NOW + 10_000  # the IKE SA's, not a child's
    m.set_sort("bps_in", reverse=True)
    assert m.view[0].connection == "conn-1"
    m.set_group("child")
    assert len(m.view) == 6 and m.ike_rows == {}
    with pytest.raises(ValueError):
        m.set_group("peer")
