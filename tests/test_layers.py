"""The package's import graph points one way: commands -> serve -> collections -> runtime ->
models -> data -> the base modules, with no cycles. Every import counts, including the ones
inside functions (they are how a layer would creep back in unnoticed)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import latentspace

ROOT = Path(latentspace.__file__).parent

# Lowest first. A module may import modules of its own layer (if that makes no cycle) and of the
# layers below; never above. `__main__` modules are commands wherever they live.
LAYERS: list[set[str]] = [
    {"latentspace", "atomic", "config", "space", "inputs", "progress", "process_state", "options", "workspace"},
    {"data"},
    {"models", "client"},
    {"runtime"},
    {"collections", "eval", "train", "compat", "embed"},
    {"serve", "collection"},
    {"cli", "quickstart", "ablate", "entry", "__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The latentspace modules `path` imports (a `from package import submodule` counts as the
    submodule, not the package's __init__)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    parts = module.split(".")
    unit = "__main__" if parts[-1] == "__main__" else (parts[1] if len(parts) > 1 else parts[0])
    for rank, names in enumerate(LAYERS):
        if unit in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {__file__}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_there_are_no_import_cycles():
    assert cycles(GRAPH) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in GRAPH.items():
        for b in targets:
            pa, pb = a.split(".")[:2], b.split(".")[:2]
            if pa != pb and not a.endswith("__main__"):
                packages[".".join(pa)].add(".".join(pb))
    assert cycles(packages) == [], "packages that import each other"


def test_the_checks_catch_what_they_are_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert (
        layer_of("latentspace.serve.app")
        > layer_of("latentspace.collections.build")
        > layer_of("latentspace.runtime.forwards")
    )
    assert (
        layer_of("latentspace.runtime.forwards")
        > layer_of("latentspace.models.embedder")
        > layer_of("latentspace.data.fetch")
    )
    assert imports_of(MODULES["latentspace.collections.unit"]) >= {"latentspace.data.fetch", "latentspace.runtime"}
