"""Synthetic gateway state in the control API's shapes, for the metrics and TUI tests and
benchmarks (tests/unit/test_metrics*.py, tests/unit/test_ui*.py, bench/bench_metrics.py,
bench/bench_tui.py). Deterministic: the same arguments give the same data."""

from __future__ import annotations

from typing import Any

ESP_PROPOSAL = "AES_GCM_16_256"
IKE_PROPOSAL = "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"


def child_sa(name: str, index: int, *, tick: int = 0, now: float = 1_700_000_000.0,
             state: str = "INSTALLED", offload: str = "none") -> dict[str, Any]:
    """One Child SA dict; its counters grow with `tick` at an index-dependent rate."""
    rate = 1000 + (index % 97) * 100  # bytes per tick
    return {
        "name": name,
        "state": state,
        "spi_in": f"c{index:07x}",
        "spi_out": f"d{index:07x}",
        "mode": "tunnel",
        "encap": False,
        "esp_proposal": ESP_PROPOSAL,
        "offload": offload,
        "bytes_in": rate * tick,
        "bytes_out": rate * tick // 2,
        "packets_in": rate * tick // 1000,
        "packets_out": rate * tick // 2000,
        "local_ts": ["10.0.0.0/24"],
        "remote_ts": [f"10.{1 + index // 65536 % 200}.{index // 256 % 256}.{index % 256}/32"],
        "installed_at": now - 60,
        "rekey_at": now + 3000 + index % 600,
        "expire_at": now + 3600,
    }


def ike_sa(connection: str, index: int, children: list[dict[str, Any]], *,
           now: float = 1_700_000_000.0, state: str = "ESTABLISHED") -> dict[str, Any]:
    return {
        "connection": connection,
        "state": state,
        "local_addr": "192.0.2.1",
        "remote_addr": f"198.51.{100 + index // 256 % 100}.{index % 256}",
        "local_id": "gw.example.org",
        "remote_id": f"peer{index}.example.org",
        "spi_i": f"{index:016x}",
        "spi_r": f"{index + 1:016x}",
        "ike_proposal": IKE_PROPOSAL,
        "established_at": now - 120 if state == "ESTABLISHED" else None,
        "rekey_at": now + 10_000,
        "expire_at": now + 14_000,
        "children": children,
    }


def synthetic_ike_sas(child_sas: int, *, children_per_ike: int = 2, tick: int = 0,
                      now: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    """`child_sas` Child SAs spread over IKE SAs of `children_per_ike` each, one IKE SA per
    connection named conn-N, children named net-K."""
    sas = []
    n_ike = -(-child_sas // children_per_ike)
    for i in range(n_ike):
        kids = [
            child_sa(f"net-{k}", i * children_per_ike + k, tick=tick, now=now)
            for k in range(min(children_per_ike, child_sas - i * children_per_ike))
        ]
        sas.append(ike_sa(f"conn-{i}", i, kids, now=now))
    return sas
