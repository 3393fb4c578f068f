"""The layer rules; the shared fixtures are tests/support/fixtures.py (a plugin).

Layers are folders: tests/unit (pure Python), tests/host (root + host kernel: netns, veth,
XDP/TC), tests/kernel (kernel ESP; delegated to a virtme-ng VM when the host kernel has
none, see tests/vmplugin.py). Each folder's tests get the matching marker, so
`pytest -m host` works as well as `pytest tests/host`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from gateway import netns as netns_mod

pytest_plugins = ["tests.vmplugin", "tests.support.fixtures"]

# Property tests check behaviour, not speed (speed is for bench/): no per-example deadline,
# which fails examples at random on a shared, loaded machine (200 ms by default).
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")

TESTS = Path(__file__).parent
LAYERS = ("unit", "host", "kernel")


def layer_of(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(TESTS.resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and rel.parts[0] in LAYERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(Path(str(item.path)))
        if layer:
            item.add_marker(getattr(pytest.mark, layer))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("host") or item.get_closest_marker("kernel"):
        if os.geteuid() != 0:
            # Not a skip: `make test` runs as root, and a silently skipped layer would
            # look green while testing nothing.
            pytest.fail("host and kernel tests need root (run `make test` as root)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Per-layer counts and test time, so slow layers are visible in every run."""
    per_layer: dict[str, list[float]] = {}
    for key in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(key, []):
            nodeid = getattr(rep, "nodeid", "")
            if not nodeid.startswith("tests/") or getattr(rep, "when", "call") != "call":
                continue
            layer = nodeid.split("/")[1]
            per_layer.setdefault(layer, []).append(getattr(rep, "duration", 0.0))
    if per_layer:
        terminalreporter.section("layers")
        for layer, durations in sorted(per_layer.items()):
            terminalreporter.write_line(
                f"{layer:>7}: {len(durations)} tests, {sum(durations):.1f} s in test bodies"
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = sorted(name for name in netns_mod.LIVE if name in _netns_names())
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"ERROR: tests left network namespaces behind: {', '.join(leftovers)}", red=True
            )
        for name in leftovers:
            netns_mod.Netns(name).close()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _netns_names() -> set[str]:
    import subprocess

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
