"""DESIGN.md's boundaries, enforced: the IKE engine is sans-IO, the UI reads no kernel,
bpf/ and ui/ import nothing of the daemon; within a package no module imports another's
private names, the imports run one way only (no cycles), and every module opens with a
docstring that says its job."""

from __future__ import annotations

import ast
from collections.abc import Iterator
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
# private names (the engine's, ike/, joins this list)
LAYERED = ("gateway", "bpf", "ui")


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


# --------------------------------------------------------------------------- the import graph


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `root`."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, lazy ones in functions included, except those under
    `if TYPE_CHECKING:` (for the type checker only: they never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip:
            yield node


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path, package: str) -> dict[str, dict[str, set[str]]]:
    """module -> {module of the package it imports: the names it takes from it}."""
    known = modules(root, package)
    graph: dict[str, dict[str, set[str]]] = {m: {} for m in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _runtime_imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.name != module:
                        graph[module].setdefault(alias.name, set())
                continue
            source = _absolute(module, node, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target, name = (sub, "") if sub in known else (source, alias.name)
                if target in known and target != module:
                    names = graph[module].setdefault(target, set())
                    if name:
                        names.add(name)
    return graph


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """The circles of the import graph (each once, as its strongly connected modules)."""
    graph = import_graph(root, package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def private_imports(root: Path, package: str) -> list[str]:
    """`a imports _name from b`: a private name of one module used by another."""
    bad = []
    for module, targets in import_graph(root, package).items():
        for target, names in sorted(targets.items()):
            for name in sorted(names):
                if name.startswith("_") and not name.startswith("__"):
                    bad.append(f"{module} imports {name} from {target}")
    return bad


@pytest.mark.parametrize("package", LAYERED)
def test_no_import_cycles(package: str) -> None:
    assert import_cycles(ROOT, package) == []


@pytest.mark.parametrize("package", LAYERED)
def test_no_module_imports_another_modules_private_names(package: str) -> None:
    assert private_imports(ROOT, package) == []


@pytest.mark.parametrize("package", LAYERED)
def test_every_module_opens_with_its_job(package: str) -> None:
    """Each module's docstring says what it is for (a room a newcomer can find)."""
    silent = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / package).rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert silent == []


def test_the_graph_checkers_see_a_cycle_and_a_private_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.c import _hidden\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
        "from . import a\n_hidden = 1\n"
    )
    (pkg / "d.py").write_text("from pkg import c\n")  # c -> d only for the type checker
    assert import_cycles(tmp_path, "pkg") == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert private_imports(tmp_path, "pkg") == ["pkg.sub.b imports _hidden from pkg.c"]
