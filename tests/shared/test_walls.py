"""The walls of the house (docs/architecture.md): which room may import which, no import cycles, small files.

Scans the source with ``ast`` (nothing is imported), so a wall broken by a lazy import inside a function is caught
as well as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pybench"

# room -> the rooms it must never import
FORBIDDEN = {
    "pybench.ops": ("pybench.prune", "pybench.bench", "pybench.cli", "pybench.measure", "pybench.zoo"),
    "pybench.prune": ("pybench.bench", "pybench.cli"),
    "pybench.bench": ("pybench.cli",),
    "pybench.measure": ("pybench.prune", "pybench.bench", "pybench.cli"),
    "pybench.zoo": ("pybench.prune", "pybench.bench", "pybench.cli"),
    "pybench.data": ("pybench.prune", "pybench.bench", "pybench.cli"),
    "pybench.train": ("pybench.prune", "pybench.bench", "pybench.cli"),
    "pybench.distributed": ("pybench.prune", "pybench.bench", "pybench.cli"),
}
# The harness reaches the engine through the public API (pybench, the callable pybench.prune package) and the
# criteria / schedules registries only, never through graph, surgery, planning internals.
BENCH_MAY_USE = ("pybench.prune", "pybench.prune.criteria", "pybench.prune.schedules")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path``; relative imports resolved; ``from m import name``
    counts ``m.name`` when that is a module of the package, else ``m``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    nodes = list(_import_time_nodes(tree.body)) if top_level_only else list(ast.walk(tree))
    found: list[tuple[str, int]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if _is_module(sub) else base, node.lineno))
    return found


def _import_time_nodes(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Nodes that run when the module is imported: not function bodies, not ``if TYPE_CHECKING:`` blocks."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            yield from _import_time_nodes(stmt.orelse)
            continue
        yield stmt
        inner = [*getattr(stmt, "body", []), *getattr(stmt, "orelse", []), *getattr(stmt, "finalbody", [])]
        inner += [n for handler in getattr(stmt, "handlers", []) for n in handler.body]
        yield from _import_time_nodes([n for n in inner if isinstance(n, ast.stmt)])


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


SOURCES = sorted(PKG.rglob("*.py"))


def in_room(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_room_imports_what_its_wall_forbids(path: Path) -> None:
    here = module_name(path)
    for room, forbidden in FORBIDDEN.items():
        if not in_room(here, room):
            continue
        bad = [f"line {line}: {name}" for name, line in imports(path) if any(in_room(name, f) for f in forbidden)]
        assert not bad, f"{here} is in {room}, which must not import {forbidden}: {bad}"


@pytest.mark.parametrize("path", [p for p in SOURCES if in_room(module_name(p), "pybench.bench")],
                         ids=lambda p: module_name(p))
def test_bench_reaches_the_engine_only_through_its_public_face(path: Path) -> None:
    bad = [f"line {line}: {name}" for name, line in imports(path)
           if in_room(name, "pybench.prune") and name not in BENCH_MAY_USE]
    assert not bad, f"{module_name(path)} reaches into the engine past {BENCH_MAY_USE}: {bad}"


def test_cli_builds_no_cell_dicts_and_calls_the_library() -> None:
    """Each command module is a shell: it never imports the worker, the driver's privates or the engine's rooms."""
    for path in sorted((PKG / "cli").glob("*.py")):
        for name, line in imports(path):
            assert not in_room(name, "pybench.bench.worker"), f"{path.name}:{line} imports the worker"
            if in_room(name, "pybench.prune"):
                assert name in BENCH_MAY_USE, f"{path.name}:{line} reaches into the engine: {name}"


def test_driver_and_worker_share_only_the_protocol_and_the_config() -> None:
    bench = PKG / "bench"
    driver = {n for n, _ in imports(bench / "driver.py")}
    worker = {n for n, _ in imports(bench / "worker.py")}
    assert "pybench.bench.worker" not in driver and "pybench.bench.driver" not in worker
    shared = {n for n in driver & worker if in_room(n, "pybench.bench")}
    assert shared <= {"pybench.bench.protocol", "pybench.bench.config"}, shared


def test_no_import_cycle_at_import_time() -> None:
    graph = {module_name(p): {n for n, _ in imports(p, top_level_only=True) if in_room(n, "pybench")}
             for p in SOURCES}
    for name, deps in graph.items():
        graph[name] = {d for d in deps if d in graph and d != name}
    cycles = _cycles(graph)
    assert not cycles, f"import cycles at import time (modules that import each other): {cycles}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("path", [*SOURCES, *sorted((ROOT / "csrc").rglob("*.c*"))], ids=lambda p: p.name)
def test_no_source_file_over_600_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 600, f"{path.relative_to(ROOT)} has {lines} lines: split it by job"
