"""Shared figures: training curves, sample grids, filters, t-SNE, label-budget curves, and small result tables.

Every function draws on a given matplotlib ``Axes`` (or makes one), labels its axes, and returns
the axes, so notebooks can compose figures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import font_manager, ft2font
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator


def _axes(ax=None, figsize=(5, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_history(history, keys: Iterable[str] | None = None, ax=None, title: str | None = None):
    """Curves of a ``History`` against epochs (default: every loss and accuracy it logged); against steps for the
    loops without epochs (``maml.meta_train``, ``protonet_train``, ``pretrain_joint``)."""
    ax = _axes(ax)
    per = "epoch" if history.epochs else "step"
    keys = list(keys) if keys is not None else sorted(k for k in history.keys(per) if "loss" in k or "acc" in k)
    for key in keys:
        ys = history.column(key, per)
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if per == "epoch" else None, ms=3, label=key)
    ax.set_xlabel(per)
    ax.set_ylabel("value")
    ax.set_title(title or "training history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_unfreezing(schedule, parts: Sequence[str], axes=None):
    """A ``GradualUnfreezing`` run (chapter 03, section 2): which of ``parts`` train in which epoch (left) and each
    part's learning rate per optimizer step, blank while frozen (right). Returns the two axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1, ax2 = axes
    grid = np.array([[1.0 if p in r["trainable"] else 0.0 for r in schedule.records] for p in parts])
    ax1.imshow(grid, cmap="Greens", aspect="auto", vmin=0, vmax=1.3)
    ax1.set(yticks=range(len(parts)), yticklabels=list(parts), xticks=range(grid.shape[1]), xlabel="epoch",
            ylabel="part (top of network first)", title="which parts train in which epoch (green = trainable)")
    steps = [t["step"] for t in schedule.lr_trace]
    for p in parts:
        ax2.plot(steps, [t[p] if t[p] > 0 else np.nan for t in schedule.lr_trace], label=p)
    ax2.set(yscale="log", xlabel="optimizer step", ylabel="learning rate (log scale)",
            title="each group's learning rate (blank while frozen)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, ncol=2)
    ax1.figure.tight_layout()
    return ax1, ax2


@functools.cache
def _font_codepoints() -> frozenset[int]:
    """Code points the default matplotlib font can draw."""
    path = font_manager.findfont(font_manager.FontProperties())
    return frozenset(ft2font.FT2Font(path).get_charmap())


def displayable(label: str) -> str:
    """``label`` with each character the default font lacks written as ``U+XXXX`` (no tofu, no warnings)."""
    known = _font_codepoints()
    return "".join(ch if ord(ch) in known or ch.isspace() else f"U+{ord(ch):04X}" for ch in str(label))


def sample_grid(
    images: torch.Tensor,
    labels: Sequence[str] | None = None,
    ncols: int = 8,
    ax=None,
    title: str | None = None,
    xlabel: str | None = None,
):
    """Images ``(N, C, H, W)`` in [0, 1] tiled into one picture, each with its label (if given) printed under it.

    Tiles have no axes of their own (a pixel index means nothing to a reader); ``xlabel`` adds a caption
    under the picture (say what the labels are, e.g. "class of each image").
    """
    images = images.detach().float().cpu().clamp(0, 1)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    c, h, w = images.shape[1:]
    label_h = int(round(0.45 * h)) if labels is not None else 0  # a strip under each tile row for its labels
    pitch_y, pitch_x = h + 2 + label_h, w + 2
    canvas = np.ones((nrows * pitch_y, ncols * pitch_x, 3), dtype=np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        arr = img.permute(1, 2, 0).numpy()
        canvas[r * pitch_y : r * pitch_y + h, col * pitch_x : col * pitch_x + w] = arr if c == 3 else arr.repeat(3, -1)
    ax = _axes(ax, figsize=(ncols * 0.8, nrows * (0.9 + (0.4 if labels is not None else 0))))
    ax.imshow(canvas, interpolation="nearest")
    if labels is not None:
        for i, label in enumerate(labels[:n]):
            r, col = divmod(i, ncols)
            ax.text(col * pitch_x + w / 2, r * pitch_y + h + 1, displayable(label), ha="center", va="top", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(xlabel or "")
    ax.set_title(title or "")
    return ax


def filter_grid(weight: torch.Tensor, ncols: int = 8, ax=None, title: str = "first-layer filters",
                combine_channels: bool = True):
    """First-layer convolution filters ``(out, 3, k, k)``, each rescaled to [0, 1] for display.

    ``combine_channels`` sums the input channels (the filter's response to a grayscale image: right
    for sources like glyphs whose three channels are equal); False shows them as RGB.
    """
    w = weight.detach().float().cpu()
    if combine_channels:
        w = w.sum(1, keepdim=True)
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    w = (w - lo) / (hi - lo + 1e-8)
    w = torch.nn.functional.interpolate(w, scale_factor=4, mode="nearest")
    k = weight.shape[-1]
    caption = (f"{len(w)} filters of {k}x{k} weights, each scaled to its own range: "
               "dark = most negative, light = most positive")
    return sample_grid(w, ncols=ncols, ax=ax, title=title, xlabel=caption)


def tsne_scatter(
    features: torch.Tensor | np.ndarray,
    labels: Sequence[int],
    groups: Sequence[int] | None = None,
    ax=None,
    title: str = "t-SNE of features",
    seed: int = 0,
    group_names: Sequence[str] = (),
    max_points: int = 2000,
):
    """2-D t-SNE (scikit-learn) of ``features`` coloured by label; marker by ``groups`` (e.g. domain)."""
    from sklearn.manifold import TSNE

    feats = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float32)
    labels = np.asarray(labels)
    groups = np.zeros(len(feats), dtype=int) if groups is None else np.asarray(groups)
    if len(feats) > max_points:
        keep = np.random.default_rng(seed).choice(len(feats), max_points, replace=False)
        feats, labels, groups = feats[keep], labels[keep], groups[keep]
    emb = TSNE(2, init="pca", random_state=seed, perplexity=min(30, max(5, len(feats) // 10))).fit_transform(feats)
    ax = _axes(ax, figsize=(5, 5))
    markers = "o^sxD"
    for g in np.unique(groups):
        m = groups == g
        name = group_names[g] if g < len(group_names) else None
        ax.scatter(
            emb[m, 0],
            emb[m, 1],
            c=labels[m],
            cmap="tab10",
            s=6,
            marker=markers[g % len(markers)],
            vmin=labels.min(),
            vmax=max(labels.max(), 9),
            label=name,
            alpha=0.7,
        )
    if len(group_names):
        shapes = [Line2D([], [], ls="", marker=markers[g % len(markers)], color="0.3", label=group_names[g])
                  for g in np.unique(groups) if g < len(group_names)]
        ax.add_artist(ax.legend(handles=shapes, fontsize=8, loc="upper left", title="marker (domain)"))

    cmap = matplotlib.colormaps["tab10"]
    span = max(labels.max(), 9) - labels.min()
    colours = [Line2D([], [], ls="", marker="o", color=cmap((c - labels.min()) / span if span else 0.0),
                          label=str(c)) for c in np.unique(labels)]
    ax.legend(handles=colours, fontsize=7, loc="lower right", title="colour (class)", ncol=2, handletextpad=0.1,
              columnspacing=0.5)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title)
    return ax


STRATEGY_STYLES = {"scratch": ("C0", "s--"), "linear_probe": ("C1", "o-"), "finetune": ("C2", "^-"),
                   "staged": ("C3", "D-")}
"""Colour and line format of each strategy of chapters 01-03, the same in every chapter's figure."""


def plot_budget_curves(rows: Sequence[dict], *, strategies: Sequence[str] | None = None,
                       all_labels: dict[str, float] | None = None, ax=None, title: str | None = None):
    """Test accuracy against labels per class (log scale): a line per strategy, error bars of ± std over seeds.

    ``rows``: ``{strategy, k, mean, std, n}`` as ``tlutils.budget.budget_rows`` gives them; ``strategies``: which
    to draw, in legend order (default: all, in the rows' order); ``all_labels``: ``{strategy: accuracy}`` with every
    label, drawn as a dotted line in the strategy's colour.
    """
    ax = _axes(ax, figsize=(6.5, 4))
    names = list(strategies) if strategies is not None else list(dict.fromkeys(r["strategy"] for r in rows))
    drawn = []  # legend entries in drawing order: the curves, then the all-labels lines
    for i, name in enumerate(names):
        mine = [r for r in rows if r["strategy"] == name]
        colour, fmt = STRATEGY_STYLES.get(name, (f"C{i}", "o-"))
        drawn.append(ax.errorbar([r["k"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                                 fmt=fmt, color=colour, capsize=3, label=name.replace("_", " ")))
    for name, acc in (all_labels or {}).items():
        drawn.append(ax.axhline(acc, color=STRATEGY_STYLES.get(name, ("0.4",))[0], lw=0.8, ls=":",
                                label=f"{name.replace('_', ' ')}, all labels"))
    if all_labels:  # horizontal lines do not widen the axis: make room for them
        top = max([*all_labels.values(), *(r["mean"] + r["std"] for r in rows)])
        ax.set_ylim(top=min(1.0, top + 0.02))
    budgets = sorted({r["k"] for r in rows if r["strategy"] in names})
    seeds = max((r["n"] for r in rows), default=0)
    ax.set(xscale="log", xlabel="labelled examples per class (log scale)", ylabel="test accuracy",
           title=title or f"test accuracy by label budget (mean ± std over {seeds} seeds)")
    ax.set_xticks(budgets, labels=[str(k) for k in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)
    ax.legend(handles=drawn, fontsize=8, loc="lower right")
    return ax


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """A list of dicts as a Markdown table (display it with ``IPython.display.Markdown``)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(v):
        return f"{v:{floatfmt}}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> None:
    """Display ``markdown_table`` in a notebook (prints it elsewhere)."""
    text = markdown_table(rows, columns, floatfmt)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Mean over each run of ``window`` consecutive values (``len(values) - window + 1`` of them)."""
    window = max(1, min(int(window), len(values)))
    return np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")


def plot_adaptation_run(history, *, window: int = 25, axes=None, title: str = "one run"):
    """The batch-by-batch curves of one adaptation run (chapter 04's DANN, chapter 05's DAN) on three axes.

    Left: every logged loss but the total (e.g. ``label_loss`` and ``domain_loss``, or ``mmd``), with ln 2 when a
    domain loss is there (a domain classifier at chance); middle: every logged accuracy (source ``acc``, the
    domain classifier's ``domain_acc``) with 0.5; right: the adaptation weight ``lambda`` as used. Curves are moving
    averages over ``window`` batches (fewer in a very short run). Returns the three axes.
    """
    steps = np.asarray(history.column("step", per="step"))
    if len(steps) == 0:
        raise ValueError("the history has no per-step logs; pass the History a training function returned")
    keys = sorted({k for r in history.steps for k in r})
    k = max(1, min(window, len(steps) // 4))
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    losses = [key for key in keys if key != "loss" and (key.endswith("loss") or key == "mmd")]
    for key in losses:
        axes[0].plot(steps[k - 1:], moving_average(history.column(key, per="step"), k), label=key)
    if "domain_loss" in losses:
        axes[0].axhline(np.log(2), ls="--", c="gray", label="ln 2 (domain chance)")
    axes[0].set(xlabel="step", ylabel="loss", title=f"{title}: losses")
    for key in (key for key in keys if key.endswith("acc")):
        axes[1].plot(steps[k - 1:], moving_average(history.column(key, per="step"), k), label=key)
    if "domain_acc" in keys:
        axes[1].axhline(0.5, ls="--", c="gray", label="domain chance")
    axes[1].set(xlabel="step", ylabel="batch accuracy", title=f"{title}: accuracies", ylim=(0.4, 1.02))
    for key in (key for key in keys if key in ("lambda", "weight")):
        axes[2].plot(steps, history.column(key, per="step"), label=f"{key} as used")
    axes[2].set(xlabel="step", ylabel="adaptation weight", title=f"{title}: weight of the transfer loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    plt.tight_layout()
    return axes


def plot_steps(history, keys: Sequence[str], *, window: int = 25, ax=None, title: str = "training, batch by batch",
               ylabel: str = "value"):
    """Per-batch logs ``keys`` of a ``History`` against the step, as moving averages over ``window`` batches
    (fewer in a very short run); the first view of a visible run (chapter 07's student, for instance)."""
    ax = _axes(ax, figsize=(6, 3.4))
    steps = np.asarray(history.column("step", per="step"))
    if len(steps) == 0:
        raise ValueError("the history has no per-step logs; pass the History a training function returned")
    k = max(1, min(window, len(steps) // 4))
    for key in keys:
        values = history.column(key, per="step")
        if not values:
            logged = sorted({n for r in history.steps for n in r})
            raise KeyError(f"{key!r} was never logged per step; logged: {logged}")
        ax.plot(steps[k - 1:], moving_average(values, k), label=key)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
