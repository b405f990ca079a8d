"""Dependencies run one way: no import cycle among ``clipa`` modules.

The graph is read from the source (AST), so imports inside functions count too: a lazy
import hides a cycle from Python's import machinery but not from a reader. An edge goes to
the module named: ``from .models import CLIP`` is an edge to ``clipa.models`` (the package's
``__init__``), ``from . import checkpoint`` one to ``clipa.checkpoint``. Python also runs every
parent package's ``__init__`` first; those implicit imports are not edges (else every module
would form a cycle with ``clipa/__init__.py``).

Cycles are looked for twice: between modules, and between packages taken whole
(``clipa.eval.cli -> clipa.train.evaluate -> clipa.eval.runner`` is no module cycle, but it
ties ``eval`` and ``train`` together so neither can be read or tested without the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import clipa

SRC = Path(clipa.__file__).parent


def module_name(path: Path, src: Path) -> str:
    parts = ["clipa", *path.relative_to(src).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: clipa modules it imports}`` for every ``.py`` file under ``src``."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up (level - 1) packages from this module's package
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, g) for g in groups]


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first inside the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each subpackage (``clipa.eval``, ``clipa.train``...) as one node."""
    def unit(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    return out


def test_no_import_cycle_between_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_between_packages():
    cycles = find_cycles(package_graph(import_graph()))
    assert not cycles, "import cycles between packages: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_function_level_and_relative_imports():
    """The walk is live: it finds known edges of each kind (module level, inside a function,
    ``from . import sub``, ``from ..pkg import name``)."""
    graph = import_graph()
    assert {"clipa.checkpoint", "clipa.distributed", "clipa.loss", "clipa.models"} <= graph["clipa.train.trainer"]
    assert {"clipa.config", "clipa.distributed", "clipa.models"} <= graph["clipa.checkpoint"]
    assert "clipa.tokenizer" in graph["clipa.hub"]  # imported inside hub.get_tokenizer only
    assert "clipa.checkpoint" not in graph["clipa.distributed"]


def test_cycle_finder_names_a_planted_cycle(tmp_path):
    """A hand-made package with a -> b -> c -> a (c's import inside a function) and d -> a."""
    pkg = tmp_path / "clipa"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from clipa.sub.c import f\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import a\n")
    (pkg / "d.py").write_text("import clipa.a\n")
    graph = import_graph(pkg)
    assert find_cycles(graph) == [["clipa.a", "clipa.sub.b", "clipa.sub.c", "clipa.a"]]
    assert find_cycles(package_graph(graph)) == [["clipa.a", "clipa.sub", "clipa.a"]]
