"""The package's import graph runs one way: each module imports only its own layer or lower ones, no cycle,
no hidden import of the package (or the standard library) inside a function, and the adaptation methods do
not lean on each other sideways."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tlutils"

# lowest first; a module may import its own layer and the layers below it, never above
LAYERS = {
    "foundation": ["tlutils.config", "tlutils.atomic", "tlutils.cache", "tlutils.schedules",
                   "tlutils.distributed", "tlutils.timing", "tlutils.parallel", "tlutils.recipe"],
    "data": ["tlutils.data", "tlutils.augment"],
    "models": ["tlutils.models", "tlutils.imagenet"],
    "train": ["tlutils.train"],
    "methods": ["tlutils.source", "tlutils.features", "tlutils.finetune", "tlutils.adapt", "tlutils.dann",
                "tlutils.mmd", "tlutils.dan", "tlutils.maml", "tlutils.fewshot_baselines", "tlutils.distill",
                "tlutils.peft", "tlutils.lpft", "tlutils.selftrain"],
    "experiments and presentation": ["tlutils.budget", "tlutils.adapt_runs", "tlutils.results", "tlutils.plots"],
    "course tooling": ["tlutils.course"],
    "package facade": ["tlutils"],  # tlutils/__init__.py: setup and record, what every notebook imports first
}


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest listed prefix of ``module`` (``tlutils.data.glyphs`` -> data)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS.items()):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "tlutils" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    if best is None:
        raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_layering.py")
    return best[0]


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
    assert "tlutils.dann" not in graph["tlutils.dan"] and "tlutils.dan" not in graph["tlutils.dann"]
    assert {"tlutils.adapt"} <= graph["tlutils.dann"] & graph["tlutils.dan"]
    assert graph["tlutils.mmd"] <= {"tlutils.config"}, "the MMD measurement needs no training code"
    lower = ("tlutils.config", "tlutils.models", "tlutils.train", "tlutils.adapt", "tlutils.mmd")
    for module in lower:
        assert not graph[module] & {"tlutils.dann", "tlutils.dan", "tlutils.adapt_runs"}, (
            f"{module} must not import the methods or their experiments")


def test_every_import_goes_down_or_sideways_within_a_layer():
    names = list(LAYERS)
    upward = [f"{m} ({names[layer_of(m)]}) imports {d} ({names[layer_of(d)]})"
              for m, deps in import_graph().items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_the_layer_check_would_catch_the_old_train_to_plots_import():
    assert layer_of("tlutils.plots") > layer_of("tlutils.train")
    assert layer_of("tlutils.dann") > layer_of("tlutils.models")  # the old models <-> dann cycle went upward too
    with pytest.raises(KeyError, match="add it to LAYERS"):
        layer_of("tlutils.brand_new_module")


def test_no_package_or_standard_library_import_hides_inside_a_function():
    """Imports inside functions are only for heavy optional third-party packages (sklearn, PIL, papermill...)."""
    hidden = []
    for path in PKG.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    mods = [node.module or ""] if node.level == 0 else ["(relative)"]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in ("tlutils", "(relative)") or top in sys.stdlib_module_names:
                        hidden.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {fn.name}() imports {mod}")
    assert not hidden, "move these imports to the top of the module:\n" + "\n".join(sorted(hidden))


def test_the_data_layer_imports_only_config_and_itself():
    graph = import_graph()
    for module, deps in graph.items():
        if module == "tlutils.data" or module.startswith("tlutils.data."):
            lower = ("tlutils.config", "tlutils.atomic", "tlutils.cache")
            above = {d for d in deps if not (d.startswith("tlutils.data") or d in lower)}
            assert not above, f"{module} imports {sorted(above)} from above the data layer"


def test_maml_does_not_import_its_baselines_and_timing_imports_no_tlutils():
    graph = import_graph()
    assert "tlutils.fewshot_baselines" not in graph["tlutils.maml"]
    assert "tlutils.maml" in graph["tlutils.fewshot_baselines"]
    assert not graph["tlutils.timing"], "timing sits below everything: it imports no tlutils module"
