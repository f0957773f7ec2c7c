"""Exercises with hidden solutions: student versions, an autograder, and nbgrader metadata.

    python -m tlutils.course.coursework student [NOTEBOOK ...] [--out student]   # default: every chapter
    python -m tlutils.course.coursework grade student/01_feature_extraction.ipynb [--profile quick] [--timeout S]
    python -m tlutils.course.coursework check [NOTEBOOK ...]      # validate the markup and the nbgrader metadata
    python -m tlutils.course.coursework annotate NOTEBOOK ...     # write nbgrader cell metadata in place

Markup (nbgrader's own, so instructors can import the chapters into nbgrader unchanged):

- The exercise section starts at the first markdown cell with a line ``## Exercises``.
- An exercise is a code cell holding a region between a line containing ``### BEGIN SOLUTION``
  and one containing ``### END SOLUTION`` (the *solution cell*). The student version replaces the
  region with nbgrader's stub ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, indented like
  the ``BEGIN`` line; the rest of the cell (prompt comment, a print of the result) stays.
- Its *check cells* are the code cells after it, up to the next solution cell, that hold an
  ``assert`` statement; they are kept verbatim (``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN
  TESTS`` regions inside them are removed from student versions, as in nbgrader). Other code cells
  in that range belong to the exercise too and simply run.
- Every exercise needs at least one check cell; markup before the ``## Exercises`` heading,
  nested or unterminated regions, and stray ``END`` lines are errors that name the cell.
- The first line of a solution cell, when it is a comment (``# Exercise 1: accuracy per alphabet``),
  is the exercise's title in the grader's report.

No metadata has to be written by hand: the rule above derives nbgrader's cell metadata
(``annotate``). The chapters are committed annotated, so nbgrader's own ``generate_assignment`` and
``autograde`` take them as they are; ``check`` (run by ``make lint``) fails when a chapter's metadata
drifts from its markup, and student versions carry it.

Why not nbgrader itself: nbgrader 0.9.6 installs cleanly offline next to JupyterLab 4.6, but it
adds nine packages (notebook 7, SQLAlchemy, alembic, ipywidgets, ...), registers four server
extensions and a lab extension in every reader's JupyterLab, and ``from nbgrader.preprocessors
import ClearSolutions`` takes ~9 s because it imports the whole server stack. Its ``ClearSolutions``
is forty lines of line matching, reproduced here with the same delimiters and stub;
``tests/test_coursework.py`` compares the two outputs whenever nbgrader is importable. Its
autograder needs a course database, so the grader here runs a notebook directly with nbclient.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tlutils.config import REPO_ROOT
from tlutils.course.nbtools import strip
from tlutils.course.run import QUIET_KERNEL

BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
STUDENT_NOTE = (
    "> **Student version.** Each exercise's solution was replaced by `raise NotImplementedError()`: write "
    "your own, run the cell and the check cell after it. Grade the whole notebook with "
    "`python -m tlutils.course.coursework grade {name}`."
)
HEADING = re.compile(r"^\s*##\s+Exercises\b", re.MULTILINE)
ASSERT = re.compile(r"^\s*assert\b", re.MULTILINE)
GRADE_ID = re.compile(r"^exercise_(text_)?\d+(_check(_\d+)?)?$")
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STUDENT_DIR = REPO_ROOT / "student"


class CourseworkError(ValueError):
    """A notebook whose exercise markup breaks the rule in this module's docstring."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: its number, title and cell indices (solution cell, check cells, all its cells)."""

    number: int
    title: str
    solution: int
    checks: tuple[int, ...]
    cells: tuple[int, ...]

    @property
    def label(self) -> str:
        if self.title.lower().startswith("exercise"):
            return self.title
        return f"Exercise {self.number}" + (f" ({self.title})" if self.title else "")


def _has(source: str, marker: str) -> bool:
    return any(marker in line for line in source.split("\n"))


def _where(index: int, cell) -> str:
    first = cell.source.strip().split("\n")[0] if cell.source.strip() else ""
    return f"cell {index} ({first[:60]!r})"


def exercise_heading(nb) -> int:
    """Index of the markdown cell that opens the exercise section, or -1."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and HEADING.search(cell.source):
            return i
    return -1


def _solution_cells(nb) -> list[int]:
    """Code cells with solution markup; in a student version (no markup left), nbgrader's solution cells."""
    marked = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _has(c.source, BEGIN_SOLUTION)]
    if marked:
        return marked
    return [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution") is True
    ]


def _title(source: str) -> str:
    for line in source.strip().split("\n"):
        text = line.lstrip("#").strip()
        if (
            not line.startswith("#")
            or BEGIN_SOLUTION in line
            or text == CODE_STUB.split("\n")[0].lstrip("# ")
        ):
            return ""
        if text:
            return text
    return ""


def find_exercises(nb) -> list[Exercise]:
    """The notebook's exercises by the rule of this module (errors name the offending cell)."""
    heading = exercise_heading(nb)
    solutions = _solution_cells(nb)
    for i, cell in enumerate(nb.cells):
        if _has(cell.source, BEGIN_SOLUTION) or _has(cell.source, END_SOLUTION):
            clear_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, "", where=_where(i, cell))
            clear_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, "", where=_where(i, cell))
        if (i in solutions or _has(cell.source, BEGIN_SOLUTION)) and (heading < 0 or i < heading):
            raise CourseworkError(
                f"{_where(i, cell)} holds a solution before the '## Exercises' heading; "
                "move the exercise below a markdown cell with a line '## Exercises'"
            )
    exercises = []
    for n, start in enumerate(solutions, 1):
        stop = solutions[n] if n < len(solutions) else len(nb.cells)
        cells = tuple(i for i in range(start, stop) if nb.cells[i].cell_type == "code")
        checks = tuple(i for i in cells[1:] if ASSERT.search(nb.cells[i].source))
        if not checks:
            raise CourseworkError(
                f"exercise {n} at {_where(start, nb.cells[start])} has no check cell; "
                'add a code cell after it with lines `assert condition, "message"`'
            )
        exercises.append(Exercise(n, _title(nb.cells[start].source), start, checks, cells))
    return exercises


def clear_region(source: str, begin: str, end: str, stub: str, where: str = "cell") -> str:
    """Replace every ``begin``..``end`` line region by ``stub`` (indented like the begin line)."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise CourseworkError(f"{where}: nested '{begin}'; close the first region with '### {end}'")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out.extend(indent + s for s in stub.split("\n") if stub)
        elif end in line:
            if not inside:
                raise CourseworkError(f"{where}: '{end}' without a '### {begin}' line above it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise CourseworkError(f"{where}: '{begin}' is never closed; add a line '### {end}'")
    return "\n".join(out)


def _nbgrader_meta(solution: bool, grade_id: str) -> dict:
    meta = {"grade": not solution, "grade_id": grade_id, "locked": not solution, "schema_version": 3}
    meta.update({"solution": solution, "task": False})
    if not solution:
        meta["points"] = 1
    return meta


def annotate(nb):
    """Write nbgrader metadata on solution and check cells, derived from the markup (in place, idempotent).

    Solution cells get ``grade_id`` ``exercise_N``; check cells ``exercise_N_check`` (``_check_2``, ...
    when an exercise has several), one point each. Stale ``exercise_*`` metadata on other cells is removed.
    """
    wanted: dict[int, dict] = {}
    for ex in find_exercises(nb):
        wanted[ex.solution] = _nbgrader_meta(True, f"exercise_{ex.number}")
        for k, i in enumerate(ex.checks, 1):
            wanted[i] = _nbgrader_meta(False, f"exercise_{ex.number}_check" + (f"_{k}" if k > 1 else ""))
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and _has(cell.source, BEGIN_SOLUTION):
            wanted[i] = _nbgrader_meta(True, f"exercise_text_{i}")
        if i in wanted:
            cell.metadata["nbgrader"] = wanted[i]
        elif GRADE_ID.match(str(cell.metadata.get("nbgrader", {}).get("grade_id", ""))):
            del cell.metadata["nbgrader"]
    return nb


def metadata_drift(nb) -> list[int]:
    """Indices of cells whose nbgrader metadata differs from what ``annotate`` derives from the markup."""
    wanted = annotate(copy.deepcopy(nb))
    return [i for i, (a, b) in enumerate(zip(nb.cells, wanted.cells, strict=True))
            if a.metadata.get("nbgrader") != b.metadata.get("nbgrader")]


def student_version(nb, name: str = "NOTEBOOK.ipynb"):
    """A copy of ``nb`` with solutions replaced by stubs, hidden tests removed, outputs stripped."""

    out = annotate(strip(copy.deepcopy(nb)))
    if not find_exercises(out):
        raise CourseworkError(f"{name} has no exercise (no code cell with '### {BEGIN_SOLUTION}')")
    for i, cell in enumerate(out.cells):
        where = _where(i, cell)
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source = clear_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub, where)
        cell.source = clear_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, "", where)
    note = nbformat.v4.new_markdown_cell(STUDENT_NOTE.format(name=name))
    note.id = "student-version-note"  # fixed, so the same notebook always gives the same file
    out.cells.insert(1, note)
    return out


def solution_leaks(solution_nb, student_nb) -> list[str]:
    """Solution lines (stripped, non-blank) found in the student version but nowhere else in the solution."""
    hidden: set[str] = set()
    visible: set[str] = set()
    for cell in solution_nb.cells:
        inside = False
        for line in cell.source.split("\n"):
            if BEGIN_SOLUTION in line or BEGIN_HIDDEN in line:
                inside = True
            elif END_SOLUTION in line or END_HIDDEN in line:
                inside = False
            elif line.strip():
                (hidden if inside else visible).add(line.strip())
    secret = hidden - visible - set(CODE_STUB.split("\n")) - {TEXT_STUB}
    student = {line.strip() for cell in student_nb.cells for line in cell.source.split("\n")}
    return sorted(secret & student)


def _names(source: str, ctx: type) -> set[str]:
    code = "\n".join(
        line for line in textwrap.dedent(source).split("\n") if not line.lstrip().startswith(("%", "!"))
    )
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}
    if ctx is ast.Store:
        names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {
            (a.asname or a.name).split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
    return names


def hidden_names(nb) -> dict[int, list[str]]:
    """Per exercise: names its checks read that only the hidden solution defines and the student can't see.

    A student who solves the exercise correctly but names things differently fails such a check; name
    them in the prompt (comment or markdown) or compute them in the check cell.
    """
    found = {}
    for ex in find_exercises(nb):
        cell = nb.cells[ex.solution]
        region = clear_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, "")
        defined = _names(_solution_text(cell.source), ast.Store)
        read = set().union(
            *(_names(nb.cells[i].source, ast.Load) - _names(nb.cells[i].source, ast.Store) for i in ex.checks)
        )
        visible = (
            "\n".join(
                clear_region(c.source, BEGIN_SOLUTION, END_SOLUTION, "")
                for i, c in enumerate(nb.cells)
                if i not in ex.checks and i != ex.solution
            )
            + "\n"
            + region
        )
        hidden = sorted(n for n in read & defined if not re.search(rf"\b{re.escape(n)}\b", visible))
        if hidden:
            found[ex.number] = hidden
    return found


def _solution_text(source: str) -> str:
    lines, inside = [], False
    for line in source.split("\n"):
        if BEGIN_SOLUTION in line:
            inside = True
        elif END_SOLUTION in line:
            inside = False
        elif inside:
            lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- grading
@dataclass
class Outcome:
    exercise: Exercise
    passed: bool
    reason: str = ""

    def line(self) -> str:
        return f"{self.exercise.label}: " + ("passed" if self.passed else f"failed: {self.reason}")


@dataclass
class Report:
    """What ``grade`` found: one outcome per exercise, or the setup cell that broke the notebook."""

    path: Path
    outcomes: list[Outcome] = field(default_factory=list)
    setup_error: str | None = None
    wall_s: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def exit_code(self) -> int:
        """0: all passed; 1: some exercise failed; 2: the notebook broke before its exercises."""
        return 2 if self.setup_error else (1 if self.failed else 0)

    def text(self) -> str:
        lines = [f"{o.line()}" for o in self.outcomes]
        if self.setup_error:
            lines.insert(0, f"SETUP FAILED (cells before the exercises must run): {self.setup_error}")
        passed = len(self.outcomes) - len(self.failed)
        lines.append(
            f"{passed} of {len(self.outcomes)} exercises passed ({self.path.name}, {self.wall_s:.0f} s)"
        )
        return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_reason(cell) -> str | None:
    """``"Name: message"`` of the error a cell raised (None if none); the failing line if no message."""
    for out in cell.get("outputs", []):
        if out.get("output_type") != "error":
            continue
        ename, evalue = out.get("ename", "Error"), str(out.get("evalue", "")).strip()
        if ename == "NotImplementedError" and not evalue:
            return "NotImplementedError: not solved yet (the solution is still the stub)"
        if evalue:
            return f"{ename}: {evalue.splitlines()[0][:300]}"
        trace = _ANSI.sub("", "\n".join(out.get("traceback", [])))
        lines = re.findall(r"^-+>\s*\d+\s+(.*)$", trace, re.MULTILINE)
        return f"{ename} at `{lines[-1].strip()}`" if lines else ename
    return None


def _inject_parameters(nb, profile: str, seed: int) -> int:
    """Insert ``PROFILE``/``SEED`` after the ``parameters`` cell, as papermill does; return its index."""
    cell = nbformat.v4.new_code_cell(
        f"# Parameters injected by the grader\nPROFILE = {profile!r}\nSEED = {seed!r}"
    )
    cell.metadata["tags"] = ["injected-parameters"]
    cell.id = "injected-parameters"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    at = tagged[0] + 1 if tagged else 0
    nb.cells.insert(at, cell)
    return at


def grade(
    path: str | Path,
    *,
    profile: str = "quick",
    seed: int = 0,
    timeout: int | None = None,
    kernel_name: str = "python3",
    save: str | Path | None = None,
) -> Report:
    """Run a notebook cell by cell like the runner (``PROFILE``/``SEED`` injected); grade each exercise.

    Cells before the first exercise must run (else ``setup_error``); after that execution never stops:
    an exercise passes when none of its cells (solution, check and others) raises, and fails with the
    first error's name and message otherwise. ``save`` writes the executed notebook there.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError


    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    find_exercises(nb)  # report markup errors against the file's own cell numbers
    at = _inject_parameters(nb, profile, seed)
    exercises = find_exercises(nb)
    if not exercises:
        raise CourseworkError(
            f"{path} has no exercise to grade: solution notebooks mark them with '### {BEGIN_SOLUTION}', "
            "student versions with nbgrader metadata (regenerate it: python -m tlutils.course.coursework student)"
        )
    report = Report(path)
    owner = {i: ex for ex in exercises for i in ex.cells}
    errors: dict[int, str] = {}
    executed: set[int] = set()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        extra_arguments=QUIET_KERNEL,
        allow_errors=True,
        interrupt_on_timeout=True,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    env = {**os.environ, "TLUTILS_PROFILE": profile, "TLUTILS_PROGRESS": "0"}
    start = time.perf_counter()
    with client.setup_kernel(env=env):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, i)
            except DeadKernelError:
                errors[i] = "the kernel died (out of memory?)"
                report.setup_error = None if i in owner else f"{_where(i - (i > at), cell)}: the kernel died"
                break
            executed.add(i)
            reason = error_reason(cell)
            if reason and i not in owner:
                report.setup_error = f"{_where(i - (i > at), cell)} raised {reason}"
                break
            if reason:
                errors[i] = reason
    report.wall_s = time.perf_counter() - start
    for ex in exercises:
        reason = next((errors[i] for i in ex.cells if i in errors), None)
        if report.setup_error:
            reason = "not run: the notebook failed before its exercises"
        elif reason is None and not executed.issuperset(ex.cells):
            reason = "not run: the kernel died before this exercise"
        report.outcomes.append(Outcome(ex, reason is None, reason or ""))
    if save:
        nbformat.write(nb, str(save))
    return report


# ----------------------------------------------------------------------------------------------- CLI
def chapters(names: list[str] | None) -> list[Path]:
    """The given notebooks, or every chapter ``notebooks/NN_*.ipynb``."""
    paths = [Path(n) for n in names] if names else sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"error: no such notebook: {', '.join(missing)}")
    return paths


def write_student_versions(paths: list[Path], out_dir: Path) -> list[Path]:
    """Write the student version of each notebook to ``out_dir``; return the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        target = out_dir.resolve() / path.name
        name = target.relative_to(REPO_ROOT) if target.is_relative_to(REPO_ROOT) else target
        nbformat.write(student_version(nbformat.read(path, as_version=4), name=str(name)), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tlutils.course.coursework", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write student versions (solutions replaced by stubs)")
    p.add_argument("notebooks", nargs="*", help="default: every notebooks/NN_*.ipynb")
    p.add_argument("--out", type=Path, default=STUDENT_DIR, help="output folder (default: student/)")
    p = sub.add_parser("grade", help="run one notebook and grade each exercise")
    p.add_argument("notebook", type=Path)
    p.add_argument("--profile", default="quick", help="PROFILE injected into the notebook (default: quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    p.add_argument("--save", type=Path, default=None, help="also write the executed notebook here")
    p = sub.add_parser("check", help="validate the exercise markup; warn about names only solutions define")
    p.add_argument("notebooks", nargs="*", help="default: every notebooks/NN_*.ipynb")
    p = sub.add_parser("annotate", help="write nbgrader metadata on solution and check cells, in place")
    p.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except CourseworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_student(args) -> int:
    for path in write_student_versions(chapters(args.notebooks), args.out):
        print(f"wrote {path}")
    return 0


def _cmd_grade(args) -> int:
    print(f"grading {args.notebook} (profile {args.profile}) ...", flush=True)
    report = grade(args.notebook, profile=args.profile, seed=args.seed, timeout=args.timeout, save=args.save)
    print(report.text())
    return report.exit_code


def _cmd_check(args) -> int:
    bad = 0
    for path in chapters(args.notebooks):
        nb = nbformat.read(path, as_version=4)
        exercises = find_exercises(nb)
        print(f"{path.name}: {len(exercises)} exercises, {sum(len(e.checks) for e in exercises)} check cells")
        if not exercises:
            print(f"  error: no exercise; add code cells with '### {BEGIN_SOLUTION}' below '## Exercises'")
            bad = 1
        for number, names in hidden_names(nb).items():
            print(
                f"  warning: exercise {number}'s checks read {', '.join(names)}, defined only in the hidden "
                "solution; name them in the prompt or compute them in the check cell"
            )
        drift = metadata_drift(nb)
        if drift:
            print(
                f"  error: nbgrader metadata out of date on cells {', '.join(map(str, drift))} (nbgrader's "
                "generate_assignment needs it); fix: python -m tlutils.course.coursework annotate "
                f"{os.path.relpath(path)}"
            )
            bad = 1
    return bad


def _cmd_annotate(args) -> int:
    for path in chapters(args.notebooks):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        if nbformat.writes(annotate(nb)) != before:
            nbformat.write(nb, path)
            print(f"annotated {path}")
    return 0


_COMMANDS = {"student": _cmd_student, "grade": _cmd_grade, "check": _cmd_check, "annotate": _cmd_annotate}

if __name__ == "__main__":
    sys.exit(main())
