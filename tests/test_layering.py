"""The package's import graph has no cycle, and the adaptation methods do not lean on each other sideways."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "tlutils"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: {tlutils modules it imports, at any depth of the file}}`` (``from tlutils import x`` -> x)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name and t != "tlutils"}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_adaptation_methods_share_tlutils_adapt_not_each_other():
    graph = import_graph()
    assert "tlutils.dann" not in graph["tlutils.mmd"] and "tlutils.mmd" not in graph["tlutils.dann"]
    assert {"tlutils.adapt"} <= graph["tlutils.dann"] & graph["tlutils.mmd"]
    lower = ("tlutils.config", "tlutils.models", "tlutils.train", "tlutils.adapt")
    for module in lower:
        assert not graph[module] & {"tlutils.dann", "tlutils.mmd", "tlutils.adapt_runs"}, (
            f"{module} must not import the methods or their experiments")


def test_the_data_layer_imports_only_config_and_itself():
    graph = import_graph()
    for module, deps in graph.items():
        if module == "tlutils.data" or module.startswith("tlutils.data."):
            above = {d for d in deps if not (d.startswith("tlutils.data") or d in ("tlutils.config", "tlutils.atomic"))}
            assert not above, f"{module} imports {sorted(above)} from above the data layer"


def test_maml_does_not_import_its_baselines_and_timing_imports_no_tlutils():
    graph = import_graph()
    assert "tlutils.fewshot_baselines" not in graph["tlutils.maml"]
    assert "tlutils.maml" in graph["tlutils.fewshot_baselines"]
    assert not graph["tlutils.timing"], "timing sits below everything: it imports no tlutils module"
