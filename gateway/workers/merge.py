"""Gateway-wide answers from the workers' answers: stats summed, histograms merged,
terminate/rekey outcomes combined (the supervisor asks every worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from gateway.control.protocol import FAILED, UNKNOWN_SA, ControlError

_SUMMED: Final = (
    "child_sas",
    "bytes_in",
    "bytes_out",
    "packets_in",
    "packets_out",
    "handshakes",
    "auth_failures",
    "dpd_failures",
    "rekeys",
    "reauths",
    "ike_rekeys",
    "install_failures",
    "install_batches",
    "engine_errors",
    "tunnel_errors",
)


def merge_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Gateway-wide stats from the workers' (sums; xfrm_errors are the kernel's, the
    same in every worker: the largest reading; the interface-wide XDP counters are the
    supervisor's own)."""
    out: dict[str, Any] = {key: sum(int(r.get(key, 0)) for r in rows) for key in _SUMMED}
    for key in ("ike_sas", "transport", "engine", "offload_fallbacks", "xdp_slots"):
        out[key] = _sum_dicts(r.get(key, {}) for r in rows)
    # each worker hands out its share of every pool: the shares add up to the pools
    pools: dict[str, dict[str, int]] = {}
    for r in rows:
        for name, states in r.get("pools", {}).items():
            pools[name] = _sum_dicts((pools.get(name, {}), states))
    out["pools"] = pools
    out["eap_users"] = max((int(r.get("eap_users", 0)) for r in rows), default=0)
    # "connection.child" -> counters of its Child SAs that are gone, summed over workers
    retired: dict[str, dict[str, int]] = {}
    for r in rows:
        for name, counters in r.get("retired", {}).items():
            retired[name] = _sum_dicts((retired.get(name, {}), counters))
    out["retired"] = retired
    reads = [r["counter_reads"] for r in rows if "counter_reads" in r]
    out["counter_reads"] = {
        "reads": sum(int(c["reads"]) for c in reads),
        "seconds": sum(float(c["seconds"]) for c in reads),
    }
    errors: dict[str, int] = {}
    for r in rows:
        for name, value in r.get("xfrm_errors", {}).items():
            errors[name] = max(errors.get(name, 0), int(value))
    out["xfrm_errors"] = errors
    out["xdp"] = []
    hooks = [r["hooks"] for r in rows if "hooks" in r]
    if hooks:
        out["hooks"] = _sum_dicts(hooks)
    tunnels = merge_tunnels([r["tunnels"] for r in rows if "tunnels" in r])
    if tunnels:
        out["tunnels"] = tunnels
    durations = merge_histograms(
        [r["handshake_durations"] for r in rows if "handshake_durations" in r]
    )
    if durations is not None:
        out["handshake_durations"] = durations
    return out


def merge_tunnels(rows: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' interface rows as one per interface: the kernel's fields (state, MTU,
    counters) are the same in every worker; Child SAs and routes up on it add up."""
    merged: dict[str, dict[str, Any]] = {}
    for worker_rows in rows:
        for row in worker_rows:
            have = merged.get(row["interface"])
            if have is None:
                merged[row["interface"]] = dict(row)
                continue
            have["children"] += row.get("children", 0)
            have["routes"] += row.get("routes", 0)
            have["connections"] = sorted({*have["connections"], *row.get("connections", ())})
    return list(merged.values())


def merge_histograms(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The workers' handshake-duration histograms as one (counts and sums add up; all
    workers run the same code, so the bucket bounds agree: a row that differs is left
    out rather than mixed in)."""
    if not rows:
        return None
    bounds = list(rows[0]["bounds"])
    same = [r for r in rows if list(r["bounds"]) == bounds and len(r["counts"]) == len(bounds) + 1]
    return {
        "bounds": bounds,
        "counts": [sum(int(r["counts"][i]) for r in same) for i in range(len(bounds) + 1)],
        "sum": sum(float(r["sum"]) for r in same),
    }


def _sum_dicts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + int(value)
    return out


def merge_action(replies: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """terminate/rekey asked of every worker: done where it had something to act on.
    All "nothing here" (unknown-sa/unknown-connection): that error; any other refusal:
    `failed` with the worker's message."""
    done = [r for _, r in replies if not isinstance(r, ControlError)]
    errors = [(w, r) for w, r in replies if isinstance(r, ControlError)]
    hard = [(w, e) for w, e in errors if e.code != UNKNOWN_SA and e.code != "unknown-connection"]
    if hard:
        w, err = hard[0]
        raise ControlError(err.code, f"{err.message} (worker {w.index})")
    if not done:
        if errors:
            raise errors[0][1]
        raise ControlError(FAILED, "no worker is running")
    return {"message": "; ".join(str(r.get("message", "")) for r in done)}
