"""Set-up promises: one dependency list in two formats, README commands, CI wiring, clean notebooks."""

import re
import tomllib
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parent.parent


def _names(reqs):
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _names(pip) == wanted


def test_torch_range_admits_the_local_wheel():
    deps = _names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"] == "torch>=2.4"


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_committed_notebooks_are_clean_and_follow_the_anatomy():
    books = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert books, "no notebooks"
    for path in books:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), f"{path.name} carries outputs: make strip"
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell not tagged parameters"
        assert "PROFILE" in code[0].source and "SEED" in code[0].source, path.name
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "What to take away" in text and "Exercise" in text, f"{path.name}: missing take-aways or exercises"
