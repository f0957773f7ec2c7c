"""The runner on tiny notebooks written by the test (the real chapters run in test_notebooks.py)."""

import json

import nbformat

from tlutils.course.run import list_notebooks, main, summary_table


def write_nb(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("PROFILE = None\nSEED = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def test_runner_collects_records_and_reports_failures(tmp_path, capsys):
    books = tmp_path / "nbs"
    books.mkdir()
    write_nb(
        books / "00_ok.ipynb",
        "from tlutils.results import record\nrecord('demo.seed', SEED + 1)\n"
        "record('demo.is_quick', PROFILE == 'quick')",
    )
    write_nb(books / "01_bad.ipynb", "x = 1", "raise ValueError('boom in cell two')")
    runs = tmp_path / "runs"
    code = main(["--profile", "quick", "--seed", "4", "--runs-dir", str(runs), "--notebooks-dir", str(books)])
    assert code == 1
    err = capsys.readouterr().err
    assert "01_bad.ipynb" in err and "boom in cell two" in err and "cell" in err
    results = json.loads((runs / "quick" / "results.json").read_text())
    assert results["00_ok"] == {"demo.seed": 5.0, "demo.is_quick": 1.0}
    assert results["_run"]["status"] == {"00_ok": "ok", "01_bad": "FAILED"}
    assert results["_run"]["profile"] == "quick" and results["_run"]["seed"] == 4
    assert (runs / "quick" / "00_ok.ipynb").exists()
    # --only keeps the other notebooks' results
    assert main(["--only", "00", "--runs-dir", str(runs), "--notebooks-dir", str(books)]) == 0
    results = json.loads((runs / "quick" / "results.json").read_text())
    assert "01_bad" in results and results["00_ok"]["demo.seed"] == 1.0


def test_list_notebooks_and_unknown_only(tmp_path):
    for name in ("00_a", "01_b", "02_c"):
        write_nb(tmp_path / f"{name}.ipynb")
    assert [p.stem for p in list_notebooks(tmp_path, ["2", "00_a"])] == ["00_a", "02_c"]
    try:
        list_notebooks(tmp_path, ["07"])
    except SystemExit as exc:
        assert "no notebook matches ['07']" in str(exc) and "01_b" in str(exc)
    else:
        raise AssertionError("expected SystemExit")


def test_unknown_profile_is_an_argparse_error(capsys):
    try:
        main(["--profile", "turbo"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "valid profiles are quick, full" in capsys.readouterr().err


def test_summary_table():
    text = summary_table({"00_a": {"m.x": 0.5}, "_run": {"wall_s": {"00_a": 12.3}, "status": {"00_a": "ok"}}})
    assert "00_a" in text and "m.x=0.5" in text and "12" in text
