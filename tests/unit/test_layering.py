"""DESIGN.md's boundaries, enforced: the IKE engine is sans-IO, the UI reads no kernel,
bpf/ and ui/ import nothing of the daemon; within a package no module imports another's
private names, the imports run one way only (no cycles), and every module opens with a
docstring that says its job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "ike": {"asyncio", "socket", "time", "pyroute2", "bcc", "gateway", "selectors", "threading"},
    # the console is a client of the control API only (gateway.control.client/protocol)
    "ui": {
        "pyroute2",
        "bcc",
        "bpf",
        "ike",
        "gateway.xfrm",
        "gateway.daemon",
        "gateway.workers",
        "gateway.dataplane",
        "gateway.config",
        "gateway.control.server",
    },
    # the programs and their loader stand below the gateway
    "bpf": {"gateway", "ui"},
}

# packages whose modules must not import each other in a circle or use each other's
# private names, and whose every module opens with a docstring that says its job
ROOMS = ("ike", "gateway", "bpf", "ui")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for mod in imported_modules(path):
            for forbidden in FORBIDDEN[package]:
                if mod == forbidden or mod.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_keeps_its_boundary(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import socket\nfrom time import monotonic\nfrom . import y\n")
    assert imported_modules(sample) == {"socket", "time"}


# --------------------------------------------------------------------------- rooms
# Inside a package: no module imports another module's private (underscore) names, and
# the modules import each other without cycles (leaf modules never import back).


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, name taken from it or "", line) for each import of `path` that
    names a module of `known`; `from pkg import mod` counts as importing pkg.mod."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:
                    out.append((sub, "", node.lineno))
                elif source in known:
                    out.append((source, alias.name, node.lineno))
    return out


def private_uses(root: Path, package: str) -> list[str]:
    """`from other import _name`, and `other._name` through an imported module."""
    known = _modules(root, package)
    bad = []
    for module, path in known.items():
        where = path.relative_to(root)
        aliases: dict[str, str] = {}  # local name -> module of the package it is bound to
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in known:
                        aliases[a.asname or a.name.split(".")[0]] = a.name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, path, node)
                for a in node.names:
                    if f"{source}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{source}.{a.name}"
        for other, name, line in _imports(module, path, known):
            if name.startswith("_") and not name.startswith("__") and other != module:
                bad.append(f"{where}:{line} imports {other}.{name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != module
            ):
                bad.append(f"{where}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return bad


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """Each strongly connected group of more than one module (or a module importing
    itself): the modules of a cycle, sorted. Imports under TYPE_CHECKING count too."""
    known = _modules(root, package)
    graph = {m: {o for o, _, _ in _imports(m, p, known)} for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for o in sorted(graph[m]):
            if o not in index:
                visit(o)
                low[m] = min(low[m], low[o])
            elif o in on_stack:
                low[m] = min(low[m], index[o])
        if low[m] == index[m]:
            group = []
            while True:
                o = stack.pop()
                on_stack.discard(o)
                group.append(o)
                if o == m:
                    break
            if len(group) > 1 or m in graph[m]:
                cycles.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return cycles


@pytest.mark.parametrize("package", ROOMS)
def test_no_module_uses_another_modules_private_names(package: str) -> None:
    assert private_uses(ROOT, package) == []


@pytest.mark.parametrize("package", ROOMS)
def test_no_import_cycles(package: str) -> None:
    assert import_cycles(ROOT, package) == []


@pytest.mark.parametrize("package", ROOMS)
def test_every_module_opens_with_its_job(package: str) -> None:
    """Each module's docstring says what it is for (a room a newcomer can find)."""
    silent = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / package).rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert silent == []


def test_the_room_checkers_see_violations(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n_hidden = 1\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (pkg / "c.py").write_text("from pkg.a import _hidden\nfrom pkg import b as bee\nbee._x()\n")
    (pkg / "sub" / "d.py").write_text("from .. import c\nfrom ..a import _hidden\nc.__name__\n")
    (pkg / "e.py").write_text("import pkg.e\nfrom pkg import __name__ as n\n")
    assert import_cycles(tmp_path, "pkg") == [["pkg.a", "pkg.b"], ["pkg.e"]]
    assert private_uses(tmp_path, "pkg") == [
        "pkg/c.py:1 imports pkg.a._hidden",
        "pkg/c.py:3 uses pkg.b._x",
        "pkg/sub/d.py:2 imports pkg.a._hidden",
    ]
