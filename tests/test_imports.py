"""The import graph of rl_lm: dependencies point one way, and no module cycle.

Layers, lowest first: core and parallel <- models, sampling <- data, rewards, tools,
tasks, envs <- algos <- train <- analysis. A module may import its own layer or a
lower one. Every import counts, including those inside functions: a lazy import
hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rl_lm"
LAYERS = {
    "core": 0,
    "parallel": 0,
    "models": 1,
    "sampling": 1,
    "data": 2,
    "rewards": 2,
    "tasks": 2,
    "tools": 2,
    "envs": 2,
    "algos": 3,
    "train": 4,
    "analysis": 5,
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The rl_lm modules `path` imports (a `from pkg import name` of a module counts as it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {m: _imports(p, modules) - {m} for m, p in paths.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"give {sorted(packages - set(LAYERS))} a layer"


def test_no_upward_import():
    upward = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if None not in (_layer(m), _layer(d)) and _layer(d) > _layer(m)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (its modules in order, the first repeated), or None."""
    done, stack = set(), []

    def visit(m: str) -> list[str] | None:
        if m in stack:
            return stack[stack.index(m) :] + [m]
        if m in done:
            return None
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if found := visit(d):
                return found
        stack.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        if found := visit(m):
            return found
    return None


def test_no_import_cycle():
    # Package __init__ files re-export their modules; they are not edges of a cycle.
    graph = {m: {d for d in deps if d.count(".") > 1} for m, deps in import_graph().items()}
    graph = {m: deps for m, deps in graph.items() if m.count(".") > 1}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert _cycle(graph) == cycle
