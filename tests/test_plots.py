"""tlutils.plots helpers."""


def test_displayable_spells_out_characters_the_font_lacks():
    from tlutils.plots import displayable

    assert displayable("a7") == "a7"
    assert displayable("\u299e") == "U+299E"  # ANGLE WITH S INSIDE: not in DejaVu Sans (a glyph class of notebook 00)


def test_sample_grid_labels_every_tile_and_has_no_meaningless_axis_labels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from tlutils.plots import filter_grid, sample_grid

    ax = sample_grid(torch.rand(10, 1, 8, 8), [f"c{i}" for i in range(10)], ncols=4)
    assert [t.get_text() for t in ax.texts] == [f"c{i}" for i in range(10)], "one label under every tile, all rows"
    assert ax.get_xlabel() == "" and ax.get_ylabel() == "", "no 'rows' / 'samples (columns)' axis labels"
    assert sample_grid(torch.rand(3, 3, 8, 8), xlabel="class").get_xlabel() == "class"
    ax = filter_grid(torch.randn(6, 3, 3, 3))
    assert "3x3" in ax.get_xlabel() and ax.get_ylabel() == ""
    plt.close("all")


def test_plot_budget_curves_labels_axes_and_every_line():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlutils.plots import plot_budget_curves

    rows = [{"strategy": s, "k": k, "mean": m, "std": 0.01, "n": 3}
            for s, base in (("scratch", 0.2), ("linear_probe", 0.6)) for k, m in ((1, base), (10, base + 0.2))]
    ax = plot_budget_curves(rows, all_labels={"linear_probe": 0.9, "scratch": 0.95}, title="t")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scratch", "linear probe", "linear probe, all labels", "scratch, all labels"], "curves first"
    assert "examples per class" in ax.get_xlabel() and ax.get_ylabel() == "test accuracy" and ax.get_title() == "t"
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [1, 10]
    assert abs(ax.get_ylim()[1] - 0.97) < 1e-12, "room for the all-labels lines"
    ax = plot_budget_curves(rows, strategies=["linear_probe"])
    assert ax.get_legend_handles_labels()[1] == ["linear probe"] and "3 seeds" in ax.get_title()
    plt.close("all")


def _run_history(n: int = 40):
    from tlutils.train import History

    steps = [{"step": i + 1, "loss": 1.0, "label_loss": 1 / (i + 1), "domain_loss": 0.69, "acc": 0.5 + i / 100,
              "domain_acc": 0.9 - i / 100, "lambda": i / n} for i in range(n)]
    return History(epochs=[{"epoch": 1}], steps=steps)


def test_moving_average_and_the_adaptation_run_figure_label_what_they_draw():
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pytest

    from tlutils.plots import moving_average, plot_adaptation_run, plot_steps
    from tlutils.train import History

    assert np.allclose(moving_average([1, 2, 3, 4], 2), [1.5, 2.5, 3.5])
    assert np.allclose(moving_average([1, 2], 10), [1.5]), "a window longer than the series shrinks to it"
    axes = plot_adaptation_run(_run_history(), window=5, title="DANN")
    assert {line.get_label() for line in axes[0].get_lines()} >= {"label_loss", "domain_loss"}
    assert "loss" not in {line.get_label() for line in axes[0].get_lines()}, "the total is not a curve of its own"
    assert {line.get_label() for line in axes[1].get_lines()} >= {"acc", "domain_acc"}
    assert [line.get_label() for line in axes[2].get_lines()] == ["lambda as used"]
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in axes)
    ax = plot_steps(_run_history(), ["loss", "acc"], window=5)
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "acc"] and ax.get_xlabel() == "step"
    with pytest.raises(KeyError, match="never logged"):
        plot_steps(_run_history(), ["teacher_agreement"])
    with pytest.raises(ValueError, match="no per-step logs"):
        plot_adaptation_run(History())


def test_plot_history_draws_epochs_or_steps():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlutils.plots import plot_history
    from tlutils.train import History

    fit_like = History(epochs=[{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}],
                       steps=[{"step": 1, "loss": 1.0}])
    meta_like = History(steps=[{"step": s, "loss": 1.0 / s, "acc": 0.1 * s} for s in (1, 2, 3)])
    ax = plot_history(fit_like)
    assert ax.get_xlabel() == "epoch" and [ln.get_label() for ln in ax.lines] == ["train_loss"]
    ax = plot_history(meta_like)
    assert ax.get_xlabel() == "step" and [ln.get_label() for ln in ax.lines] == ["acc", "loss"]
    assert len(ax.lines[0].get_xdata()) == 3
    plt.close("all")


def test_plot_unfreezing_shows_the_schedule_per_part():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlutils.plots import plot_unfreezing

    class Schedule:  # the two attributes of GradualUnfreezing that the plot reads
        records = [{"trainable": ["head"]}, {"trainable": ["head", "stage4"]}]
        lr_trace = [{"step": 1, "head": 1e-3, "stage4": 0.0}, {"step": 2, "head": 1e-3, "stage4": 3.8e-4}]

    ax1, ax2 = plot_unfreezing(Schedule(), ["head", "stage4"])
    assert ax1.images[0].get_array().tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert [ln.get_label() for ln in ax2.lines] == ["head", "stage4"] and ax2.get_yscale() == "log"
    frozen = ax2.lines[1].get_ydata()[0]
    assert frozen != frozen, "a frozen part's rate is NaN (blank), not 0 on a log axis"
    assert ax1.get_xlabel() == "epoch" and ax2.get_ylabel() == "learning rate (log scale)"
    plt.close("all")
