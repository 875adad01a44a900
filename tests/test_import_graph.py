"""src/lossatlas has no import cycle, counting every import (module level and inside functions)."""
import ast
from pathlib import Path

import lossatlas

ROOT = Path(lossatlas.__file__).parent
PKG = "lossatlas"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from . import x` / `from .pkg import x`: the submodule x when there is one
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target and target not in modules and "." in target:  # `import lossatlas.a.b` style
                    target = target.rpartition(".")[0]
                if target in modules and target != mod and target.split(".")[0] == PKG:
                    graph[mod].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_and_submodule_imports():
    graph = _graph()
    assert "lossatlas.directions._base" in graph["lossatlas.directions._random"]
    assert "lossatlas.params" in graph["lossatlas.directions._random"]  # `from .. import params as P`
    assert "lossatlas.directions" in graph["lossatlas.demo"]            # `from . import directions as D`
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_trajectory_and_curvature_do_not_import_directions():
    """Directions are built on trajectories (PCA) and curvature operators (Hessian eigenvectors); only
    the grid job ``curvature.ratio`` (a map over a plane of directions, built on ``surface``) and the
    package's re-export of it sit above them."""
    graph = _graph()
    above = {"lossatlas.curvature.ratio", "lossatlas.curvature"}
    for mod, targets in graph.items():
        if mod == "lossatlas.trajectory" or (mod.startswith("lossatlas.curvature") and mod not in above):
            bad = [t for t in targets if t == "lossatlas.directions" or t.startswith("lossatlas.directions.")]
            assert not bad, f"{mod} imports {bad}: directions are built on top of it"
