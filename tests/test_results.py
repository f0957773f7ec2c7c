import json

import nbformat
import pytest

from tlutils.results import MIME, collect_from_notebook, load_results, mean_std, record, recorded


def test_record_validates_and_remembers(capsys):
    assert record("target_acc.demo", 0.5) is None, "nothing to echo at the end of a notebook cell"
    assert recorded()["target_acc.demo"] == 0.5
    assert "target_acc.demo = 0.5" in capsys.readouterr().out
    assert recorded()["target_acc.demo"] == 0.5
    with pytest.raises(ValueError, match="dotted lower case"):
        record("Target Acc", 1.0)
    with pytest.raises(ValueError, match="finite"):
        record("x.nan", float("nan"))
    with pytest.raises(TypeError, match="needs a number"):
        record("x.text", "high")


def test_collect_from_executed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("record('a.b', 2)")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/plain": "a.b = 2", MIME: {"name": "a.b", "value": 2}})
    ]
    nb.cells = [cell, nbformat.v4.new_markdown_cell("text")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert collect_from_notebook(path) == {"a.b": 2.0}


def test_load_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="tlutils.course.run --profile quick"):
        load_results("quick", tmp_path)
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "results.json").write_text(json.dumps({"00_x": {"m": 1}}))
    assert load_results("quick", tmp_path)["00_x"]["m"] == 1


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.4142, abs=1e-4))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_paired_difference_matches_the_t_interval():
    from tlutils.results import paired_difference

    out = paired_difference([0.70, 0.62, 0.66, 0.71, 0.64], [0.65, 0.60, 0.66, 0.66, 0.61])
    # differences 0.05, 0.02, 0.00, 0.05, 0.03: mean 0.03, sd 0.021213; t(0.975, 4) = 2.776445
    assert out["n"] == 5 and abs(out["mean"] - 0.03) < 1e-12
    assert abs(out["sd"] - 0.0212132) < 1e-6
    assert abs(out["half_width"] - 2.776445 * 0.0212132 / 5**0.5) < 1e-6
    assert abs(out["low"] - (out["mean"] - out["half_width"])) < 1e-12
    with pytest.raises(ValueError, match="paired"):
        paired_difference([0.5], [0.4])


def test_format_mean_std_matches_mean_std():
    from tlutils.results import format_mean_std

    assert format_mean_std([0.5, 0.7]) == "0.600 ± 0.141"
    assert format_mean_std([0.25], digits=1) == "0.2 ± 0.0"


def test_paired_verdict_reads_the_interval():
    from tlutils.results import paired_verdict

    assert paired_verdict({"mean": 0.01, "low": -0.01, "high": 0.03}, "staged", "fine-tune") == \
        "no detectable difference"
    assert paired_verdict({"mean": 0.04, "low": 0.01, "high": 0.07}, "staged", "fine-tune") == \
        "staged better by 4.0 points"
    assert paired_verdict({"mean": -0.025, "low": -0.04, "high": -0.01}, "staged", "fine-tune") == \
        "fine-tune better by 2.5 points"


def test_record_paired_and_budget_record_their_keys(capsys):
    from tlutils.results import paired_difference, record_budget, record_paired, recorded

    record_paired("pd.test", paired_difference([0.7, 0.6, 0.65], [0.6, 0.6, 0.6]))
    rows = [{"strategy": "finetune", "k": 1, "mean": 0.5, "std": 0.1, "n": 3},
            {"strategy": "scratch", "k": 1, "mean": 0.2, "std": 0.1, "n": 3}]
    record_budget(rows, strategies=("finetune",), prefix="bt")
    got = recorded()
    assert abs(got["pd.test"] - 0.05) < 1e-12 and got["pd.test.n"] == 3 and got["pd.test.ci95"] > 0
    assert got["bt.finetune.k1"] == 0.5 and "bt.scratch.k1" not in got


def test_budget_table_long_and_wide():
    from tlutils.results import budget_table

    rows = [{"strategy": "linear_probe", "k": 1, "mean": 0.5, "std": 0.1, "n": 3},
            {"strategy": "linear_probe", "k": 5, "mean": 0.7, "std": 0.05, "n": 3}]
    assert budget_table(rows)[1] == {"strategy": "linear_probe", "labels per class": 5,
                                     "test accuracy": "0.700 ± 0.050"}
    assert budget_table(rows, wide=True) == [{"strategy": "linear probe", "k=1": "0.500 ± 0.100",
                                              "k=5": "0.700 ± 0.050"}]


def test_domain_game_reads_the_domain_classifier_of_one_run():
    from tlutils.results import domain_game
    from tlutils.train import History

    steps = [{"step": i, "domain_acc": 1.0 if i < 10 else 0.5, "domain_loss": 0.1 if i < 10 else 0.7, "acc": 0.9}
             for i in range(100)]
    game = domain_game(History(steps=steps), window=5)
    assert game["early"] == 1.0 and game["late"] == 0.5 and game["peak"] == 1.0
    assert game["late_loss"] == pytest.approx(0.7) and game["late_source_acc"] == pytest.approx(0.9)
    assert "fool" in game["state"]
    steps = [dict(s, domain_acc=0.9) for s in steps]
    assert "still tells the domains apart" in domain_game(History(steps=steps))["state"]
    with pytest.raises(ValueError, match="domain_acc"):
        domain_game(History(steps=[{"step": 1, "loss": 1.0}]))
