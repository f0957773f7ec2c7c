"""Student versions and the grader: tiny notebooks shaped like the chapters, and the chapters statically."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tlutils.course.coursework import (
    CODE_STUB,
    CourseworkError,
    annotate,
    find_exercises,
    grade,
    hidden_names,
    main,
    solution_leaks,
    student_version,
)

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STUB_LINE = CODE_STUB.split("\n")[-1]


def _nb(*cells: tuple[str, str]):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    for kind, source in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if kind == "params":
            cell.metadata["tags"] = ["parameters"]
        cell.id = f"cell-{len(nb.cells)}"
        nb.cells.append(cell)
    return nb


EX1 = "# Exercise 1: square of base\n### BEGIN SOLUTION\nsquare = base ** 2\n### END SOLUTION"
EX2 = "# Exercise 2: cube of base -> `cube`\n### BEGIN SOLUTION\n{}\n### END SOLUTION\nprint(cube)"
EX3 = "# Exercise 3: twice(x)\ndef twice(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
CHECK3 = (
    'assert twice(4) == 8, "twice(4)"\n### BEGIN HIDDEN TESTS\nassert twice(-1) == -2\n### END HIDDEN TESTS'
)


def tiny(ex2: str = "cube = base ** 3") -> nbformat.NotebookNode:
    """A chapter in miniature: parameters, setup, '## Exercises', 3 exercises (indented; hidden test)."""
    return _nb(
        ("md", "# Tiny chapter"),
        ("params", "PROFILE = None\nSEED = 0"),
        ("code", 'assert PROFILE == "quick", "the grader injects the profile"\nbase = 3'),
        ("md", "## What to take away\n\nSquares.\n\n## Exercises\n\n1. Square `base` into `square`."),
        ("code", EX1),
        ("code", 'assert square == 9, "square must be base squared"'),
        ("code", EX2.format(ex2)),
        ("code", "assert cube == 27"),
        ("code", EX3),
        ("md", "A remark between the solution and its check."),
        ("code", CHECK3),
    )


def test_the_rule_finds_solution_and_check_cells():
    exercises = find_exercises(tiny())
    assert [(e.solution, e.checks, e.cells) for e in exercises] == [
        (4, (5,), (4, 5)),
        (6, (7,), (6, 7)),
        (8, (10,), (8, 10)),
    ]
    assert exercises[0].label == "Exercise 1: square of base"


def test_student_version_stubs_solutions_and_keeps_checks():
    solution = tiny()
    student = student_version(solution, name="student/tiny.ipynb")
    sources = [c.source for c in student.cells]
    assert sum(c.source.count(STUB_LINE) for c in student.cells if c.cell_type == "code") == 3
    assert "def twice(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()" in "\n".join(sources)
    assert 'assert square == 9, "square must be base squared"' in sources and "assert cube == 27" in sources
    assert 'assert twice(4) == 8, "twice(4)"' in sources, "hidden tests removed, visible asserts kept"
    assert solution_leaks(solution, student) == []
    assert "twice(-1)" not in "\n".join(sources)
    assert "student/tiny.ipynb" in sources[1], "the note tells the student how to grade"
    assert nbformat.writes(student) == nbformat.writes(student_version(solution, name="student/tiny.ipynb"))
    assert nbformat.writes(solution) == nbformat.writes(tiny()), "the solution notebook is left untouched"


def test_leak_detector_sees_a_leak():
    solution = tiny()
    student = student_version(solution)
    student.cells[-1].source += "\nsquare = base ** 2"
    assert solution_leaks(solution, student) == ["square = base ** 2"]


@pytest.mark.parametrize(
    ("index", "source", "message"),
    [
        (2, "### BEGIN SOLUTION\nbase = 3\n### END SOLUTION", "before the '## Exercises' heading"),
        (4, "### BEGIN SOLUTION\nsquare = 9", "never closed"),
        (4, "### BEGIN SOLUTION\n### BEGIN SOLUTION\nsquare = 9\n### END SOLUTION", "nested"),
        (4, "square = 9\n### END SOLUTION", "without a"),
        (5, "print(square)", "has no check cell"),
    ],
)
def test_bad_markup_is_an_error_naming_the_cell(index, source, message):
    nb = tiny()
    nb.cells[index].source = source
    with pytest.raises(CourseworkError, match=message) as info:
        student_version(nb)
    assert f"cell {index}" in str(info.value) or "exercise 1" in str(info.value)


def test_annotate_writes_nbgrader_metadata_idempotently():
    nb = tiny()
    nb.cells[2].metadata["nbgrader"] = {"grade_id": "exercise_9", "solution": True}  # stale
    once = nbformat.writes(annotate(nb))
    assert nbformat.writes(annotate(nb)) == once
    meta = [c.metadata.get("nbgrader") for c in nb.cells]
    assert meta[4]["solution"] and meta[4]["grade_id"] == "exercise_1" and not meta[4]["grade"]
    assert meta[5]["grade"] and meta[5]["points"] == 1 and meta[5]["grade_id"] == "exercise_1_check"
    assert meta[2] is None and meta[9] is None


def test_hidden_names_flags_checks_that_read_solution_only_helpers():
    nb = tiny()
    nb.cells[4].source = EX1.replace("square = base ** 2", "helper = 2\nsquare = base ** helper")
    nb.cells[5].source = "assert square == base ** helper"
    assert hidden_names(nb) == {1: ["helper"]}, "`square` is named in the markdown, `helper` nowhere"
    assert hidden_names(tiny()) == {}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_student_version_is_static_clean(path):
    """Each chapter: exercises found, one stub per solution region, checks kept verbatim, no solution text."""
    solution = nbformat.read(path, as_version=4)
    exercises = find_exercises(solution)
    assert exercises, f"{path.name}: no exercise (code cell with '### BEGIN SOLUTION')"
    student = student_version(solution)
    regions = sum(c.source.count("BEGIN SOLUTION") for c in solution.cells if c.cell_type == "code")
    assert sum(c.source.count(STUB_LINE) for c in student.cells if c.cell_type == "code") == regions
    kept = {c.source for c in student.cells}
    for ex in exercises:
        for i in ex.checks:
            if "BEGIN HIDDEN TESTS" not in solution.cells[i].source:
                assert solution.cells[i].source in kept, f"{path.name}: check cell {i} not kept verbatim"
    assert solution_leaks(solution, student) == [], f"{path.name}: solution text in the student version"
    assert not any(c.get("outputs") for c in student.cells)


def test_same_output_as_nbgrader_clear_solutions():
    """Where nbgrader is installed, its ClearSolutions + ClearHiddenTests give the same cell sources."""
    pre = pytest.importorskip("nbgrader.preprocessors", reason="nbgrader not installed (optional)")
    nb = annotate(tiny())
    for proc in (pre.ClearSolutions(), pre.ClearHiddenTests()):
        nb, _ = proc.preprocess(nb, {})
    ours = [c.source for c in student_version(tiny()).cells if c.get("id") != "student-version-note"]
    assert [c.source for c in nb.cells] == ours


# ---------------------------------------------------------------------------------- grading (starts kernels)
def test_grader_passes_the_solution_notebook(tmp_path):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(tiny(), path)
    report = grade(path, timeout=60)
    assert report.setup_error is None
    assert [o.passed for o in report.outcomes] == [True, True, True] and report.exit_code == 0


def test_grader_fails_each_unsolved_exercise_without_stopping(tmp_path, capsys):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(student_version(tiny()), path)
    assert main(["grade", str(path), "--timeout", "60"]) == 1
    out = capsys.readouterr().out
    assert out.count("failed: NotImplementedError: not solved yet") == 3, out
    assert "0 of 3 exercises passed" in out and "SETUP FAILED" not in out


def test_grader_reports_wrong_answers_with_their_message(tmp_path):
    student = student_version(tiny(ex2="cube = base ** 2"))
    cells = student.cells
    cells[5].source = cells[5].source.replace(STUB_LINE, "square = base * base")  # solved
    cells[7].source = cells[7].source.replace(STUB_LINE, "cube = base * 9 - 1")  # wrong
    path = tmp_path / "student.ipynb"
    nbformat.write(student, path)
    report = grade(path, timeout=60)
    reasons = [o.reason for o in report.outcomes]
    assert [o.passed for o in report.outcomes] == [True, False, False], report.text()
    assert reasons[1] == "AssertionError at `assert cube == 27`"
    assert reasons[2].startswith("NotImplementedError") and report.exit_code == 1


def test_grader_stops_when_setup_breaks(tmp_path):
    nb = tiny()
    nb.cells[2].source = "base = undefined_name"
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    report = grade(path, timeout=60)
    assert report.exit_code == 2 and "NameError" in report.setup_error and "cell 2" in report.setup_error
    assert all(o.reason.startswith("not run") for o in report.outcomes)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_solution_notebooks_pass_their_checks_in_the_quick_run(quick_run, path):
    """Every check cell of the executed chapter ran without error."""
    executed = nbformat.read(quick_run.parent / path.name, as_version=4)
    for ex in find_exercises(executed):
        for i in ex.cells:
            cell = executed.cells[i]
            assert cell.execution_count is not None, f"{path.name}: {ex.label} cell {i} did not run"
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{path.name}: {ex.label} failed: {errors[0].ename}: {errors[0].evalue}"


WARM_CHAPTERS = [p for p in CHAPTERS if p.stem[:2] in ("00", "03", "05")]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", WARM_CHAPTERS, ids=[p.stem for p in WARM_CHAPTERS])
def test_student_chapter_runs_to_its_exercises_and_each_fails_unsolved(quick_run, path, tmp_path):
    """A real student version executes up to its exercises; the grader marks each one failed, none crashed.

    Chapters whose body is cheap once the quick run has filled the caches (source checkpoint, feature and
    label-budget runs, chapter 04's pair); the others are covered statically above and graded the same way
    by ``make grade``.
    """
    student = tmp_path / path.name
    nbformat.write(student_version(nbformat.read(path, as_version=4), name=f"student/{path.name}"), student)
    report = grade(student, timeout=600)
    assert report.setup_error is None, report.text()
    assert report.outcomes and report.exit_code == 1, report.text()
    for outcome in report.outcomes:
        assert not outcome.passed and outcome.reason.startswith("NotImplementedError"), report.text()


# ---------------------------------------------------------------------------------- nbgrader itself
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapters_are_committed_with_their_nbgrader_metadata(path):
    """nbgrader reads cell metadata, not our markup: the committed chapter must already carry it."""
    from tlutils.course.coursework import metadata_drift

    drift = metadata_drift(nbformat.read(path, as_version=4))
    assert not drift, (f"{path.name}: nbgrader metadata out of date on cells {drift}; "
                       f"run python -m tlutils.course.coursework annotate notebooks/{path.name}")


def test_check_fails_when_metadata_drifts(tmp_path, capsys):
    path = tmp_path / "00_tiny.ipynb"
    nbformat.write(annotate(tiny()), path)
    assert main(["check", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    del nb.cells[4].metadata["nbgrader"]
    nbformat.write(nb, path)
    assert main(["check", str(path)]) == 1
    assert "annotate" in capsys.readouterr().out


def _nbgrader(course: Path, *args: str) -> None:
    import os
    import subprocess
    import sys

    bin_dir = str(Path(sys.executable).parent)  # nbgrader calls alembic from the venv's bin
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "TLUTILS_PROFILE": "quick"}
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _course(tmp_path: Path, chapters: list[Path]) -> Path:
    course = tmp_path / "course"
    (course / "source" / "ch").mkdir(parents=True)
    for chapter in chapters:
        (course / "source" / "ch" / chapter.name).write_bytes(chapter.read_bytes())  # as committed
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'tl'\nc.CourseDirectory.root = '.'\n"
        "c.ExecutePreprocessor.timeout = 1800\nc.Execute.timeout = 1800\n"
    )
    return course


def test_nbgrader_generate_assignment_takes_the_committed_chapters(tmp_path):
    """nbgrader's own generate_assignment on every chapter as committed (one assignment, one run)."""
    pytest.importorskip("nbgrader", reason="nbgrader not installed (optional: pip install nbgrader)")
    course = _course(tmp_path, CHAPTERS)
    _nbgrader(course, "generate_assignment", "ch", "--force")
    for path in CHAPTERS:
        released = nbformat.read(course / "release" / "ch" / path.name, as_version=4)
        assert any("raise NotImplementedError()" in c.source for c in released.cells), path.name
        assert not any("### BEGIN SOLUTION" in c.source for c in released.cells), f"{path.name}: solution released"


@pytest.mark.notebooks
def test_nbgrader_autograde_scores_unsolved_zero_and_solved_full(tmp_path):
    """nbgrader's own autograder on chapter 00 as committed: the released version scores 0, the solutions full marks."""
    pytest.importorskip("nbgrader", reason="nbgrader not installed (optional: pip install nbgrader)")
    from nbgrader.api import Gradebook

    chapter = REPO / "notebooks" / "00_pretrain_source.ipynb"
    course = _course(tmp_path, [chapter])
    _nbgrader(course, "generate_assignment", "ch", "--force")
    for student, source in (("unsolved", course / "release" / "ch"), ("solved", course / "source" / "ch")):
        (course / "submitted" / student / "ch").mkdir(parents=True)
        (course / "submitted" / student / "ch" / chapter.name).write_bytes((source / chapter.name).read_bytes())
    _nbgrader(course, "autograde", "ch", "--create", "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission_notebook(chapter.stem, "ch", s) for s in ("unsolved", "solved")}
        marks = {s: (nb.score, nb.max_score) for s, nb in scores.items()}
    checks = sum(len(ex.checks) for ex in find_exercises(nbformat.read(chapter, as_version=4)))
    assert marks == {"unsolved": (0, checks), "solved": (checks, checks)}, marks
