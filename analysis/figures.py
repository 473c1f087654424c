"""The analysis figures (matplotlib, Agg backend), each saved as PNG and SVG.

Accuracies arrive as fractions and are drawn in percent; losses are drawn on a log axis because
they span two to three decades over training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and figures must not depend on one

import matplotlib.pyplot as plt
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.bootstrap import BootstrapResult  # noqa: E402

TRAIN, TEST = "tab:blue", "tab:orange"
plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3})


def save(fig: Figure, out_dir: Path, stem: str) -> Path:
    """Write ``stem.png`` and ``stem.svg`` into out_dir, close the figure, return the PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.svg", bbox_inches="tight")
    plt.close(fig)
    return png


def mean_band(curves: pd.DataFrame, column: str, confidence: float) -> pd.DataFrame:
    """Per epoch: mean over runs and its pointwise t-interval (columns mean, low, high, n)."""
    g = curves.groupby("epoch")[column]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
    t = stats.t.ppf(0.5 + confidence / 2, np.maximum(out["n"] - 1, 1))
    half = np.where(out["n"] > 1, t * out["sd"] / np.sqrt(out["n"]), 0.0)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def loss_label(loss: str | None) -> str:
    """The loss axis' label, naming the loss the runs used ("MSE", "MAE"; None: unknown)."""
    return f"loss ({loss.upper()}, log scale)" if loss else "loss (log scale)"


def _curve_pair(
    single: pd.DataFrame,
    runs: pd.DataFrame,
    *,
    metric: str,
    seed: object,
    confidence: float,
    title: str,
    loss: str | None = None,
) -> Figure:
    """Left: one run's train/test curves; right: mean over runs with a confidence band.

    ``loss`` names the loss the runs trained with (their model.loss) on the loss axis.
    """
    is_acc = metric == "acc"
    scale = 100.0 if is_acc else 1.0
    ylabel = "accuracy (%)" if is_acc else loss_label(loss)
    n_runs = runs["run_id"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for split, color in (("train", TRAIN), ("test", TEST)):
        col = f"{split}_{metric}"
        axes[0].plot(single["epoch"], single[col] * scale, color=color, lw=1.2, label=split)
        band = mean_band(runs, col, confidence)
        if is_acc:  # a t-interval of few runs can leave [0, 1]; accuracy cannot
            band[["low", "high"]] = band[["low", "high"]].clip(0.0, 1.0)
        axes[1].plot(band.index, band["mean"] * scale, color=color, lw=1.2, label=f"{split} mean")
        axes[1].fill_between(
            band.index,
            band["low"] * scale,
            band["high"] * scale,
            color=color,
            alpha=0.3,
            lw=0,
            label=f"{split} {confidence:.0%} CI of mean",
        )
    axes[0].set_title(f"one run (seed {seed})")
    axes[1].set_title(f"mean over {n_runs} runs, pointwise t-interval")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(loc="lower right" if is_acc else "upper right")
        if not is_acc:
            ax.set_yscale("log")
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curve_figures(
    curves: pd.DataFrame,
    single_run_id: str,
    seed: object,
    *,
    confidence: float = 0.99,
    setting: str = "",
    loss: str | None = None,
) -> dict[str, Figure]:
    """The report's Figure 1 (loss) and Figure 2 (accuracy) against epoch, one run and mean.

    ``loss``: the runs' model.loss, named on Figure 1's axis (None: not recorded, not named).
    """
    single = curves[curves["run_id"] == single_run_id].sort_values("epoch")
    out = {}
    for metric, stem, what in (
        ("loss", "fig1_loss", "Train/test loss vs epoch"),
        ("acc", "fig2_accuracy", "Train/test accuracy vs epoch"),
    ):
        fig = _curve_pair(
            single,
            curves,
            metric=metric,
            seed=seed,
            confidence=confidence,
            title=f"{what}{' - ' + setting if setting else ''}",
            loss=loss,
        )
        out[stem] = fig
    return out


def bootstrap_figure(
    results: Sequence[BootstrapResult],
    *,
    reference: dict[str, tuple[float, float]] | None = None,
    reference_label: str = "report",
) -> Figure:
    """Histograms of the bootstrap distributions of mean and std, intervals marked.

    ``reference`` maps "mean"/"std" to an interval in percent (the report's), drawn shaded.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:red"]
    for ax, stat in zip(axes, ("mean", "std"), strict=True):
        if reference and stat in reference:
            lo, hi = reference[stat]
            ax.axvspan(lo, hi, color="0.6", alpha=0.35, lw=0, label=f"{reference_label} interval")
        for res, color in zip(results, colors, strict=False):
            iv = getattr(res, stat)
            dist = iv.distribution * 100
            if res.resample_size == res.n:
                label = f"{res.method}, n out of n (n={res.n})"
            else:
                label = f"{res.method} (m={res.resample_size} of n={res.n})"
            if dist.size > 1 and np.ptp(dist) > 0:
                ax.hist(dist, bins=120, density=True, histtype="step", color=color, label=label)
            else:
                ax.plot([], [], color=color, label=label + ": all values equal, point")
            for x in (iv.low, iv.high):
                ax.axvline(x * 100, color=color, ls="--", lw=1.2)
            ax.plot(
                [], [], color=color, ls="--", label=f"{res.confidence:.0%} interval, {res.method}"
            )
        ax.set_ylabel("density")
    conf = results[0].confidence if results else 0.99
    axes[0].set_xlabel("mean test accuracy over a resample (%)")
    axes[1].set_xlabel("std of test accuracy over a resample (percentage points, ddof=1)")
    axes[0].set_title("bootstrap distribution of the mean")
    axes[1].set_title("bootstrap distribution of the std")
    fig.suptitle(f"Bootstrap of final test accuracy, {conf:.0%} intervals dashed")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    # One legend under both panels: inside, it would cover the distributions' peaks.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def _lr_label(lr: float) -> str:
    return f"{lr:g}"


def ranked_figure(configs: pd.DataFrame, *, confidence: float, method: str) -> Figure:
    """Mean test accuracy per configuration with its interval, best at the top."""
    df = configs.sort_values("mean", ascending=True, na_position="first").reset_index(drop=True)
    height = max(3.0, 0.32 * len(df) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    y = np.arange(len(df))
    has_ci = df["low"].notna()
    mean = df["mean"] * 100
    ax.errorbar(
        mean[has_ci],
        y[has_ci],
        xerr=[(mean - df["low"] * 100)[has_ci], (df["high"] * 100 - mean)[has_ci]],
        fmt="o",
        color="tab:blue",
        ms=4,
        capsize=3,
        label=f"mean, {confidence:.0%} {method} interval",
    )
    no_ci = ~has_ci & df["mean"].notna()
    if no_ci.any():
        ax.plot(mean[no_ci], y[no_ci], "o", mfc="none", color="tab:gray", label="mean (< 2 runs)")
    labels = []
    for _, r in df.iterrows():
        extra = []
        if r["n_diverged"]:
            extra.append(f"{int(r['n_diverged'])} diverged")
        if r["n_failed"]:
            extra.append(f"{int(r['n_failed'])} failed")
        if r["failed_job"]:
            extra.append("job failed")
        elif pd.isna(r["mean"]):
            extra.append("no usable run")
        labels.append(r["label"] + (f"  [{', '.join(extra)}]" if extra else ""))
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("final test accuracy (%)")
    ax.set_title(
        f"Configurations ranked by mean final test accuracy ({len(df)} configs)", loc="right"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_figure(configs: pd.DataFrame) -> Figure:
    """Learning rate x batch size heatmap of mean test accuracy, one panel per activation set."""
    acts = sorted(configs["activations"].astype(str).unique())
    lrs = sorted(configs["lr"].unique())
    bss = sorted(configs["batch_size"].unique())
    ncol = min(3, len(acts))
    nrow = math.ceil(len(acts) / ncol)
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(1.3 * len(bss) * ncol + 2.5, 0.6 * len(lrs) * nrow + 1.8),
        squeeze=False,
        layout="constrained",
    )
    finite = configs["mean"].dropna() * 100
    vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0.0, 100.0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    im = None
    for ax, act in zip(axes.flat, acts, strict=False):
        sub = configs[configs["activations"].astype(str) == act]
        grid = np.full((len(lrs), len(bss)), np.nan)
        text = [["" for _ in bss] for _ in lrs]
        for _, r in sub.iterrows():
            i, j = lrs.index(r["lr"]), bss.index(r["batch_size"])
            grid[i, j] = r["mean"] * 100
            bad = int(r["n_diverged"] + r["n_failed"])
            cell = "n/a" if pd.isna(r["mean"]) else f"{r['mean'] * 100:.2f}"
            if r["failed_job"]:
                cell = "job\nfailed"
            elif bad:
                cell += f"\n{bad}/{int(r['n_runs'])} div/fail"
            text[i][j] = cell
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(lrs)):
            for j in range(len(bss)):
                v = grid[i, j]
                light = np.isnan(v) or v < vmin + 0.6 * (vmax - vmin)
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                        color="white" if light and not np.isnan(v) else "black")  # fmt: skip
        ax.set_xticks(range(len(bss)), [str(b) for b in bss])
        ax.set_yticks(range(len(lrs)), [_lr_label(lr) for lr in lrs])
        ax.set_xlabel("batch size (samples)")
        ax.set_ylabel("learning rate")
        ax.set_title(f"activations: {act}", fontsize=9)
        ax.grid(False)
    for ax in list(axes.flat)[len(acts) :]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.9, label="mean final test accuracy (%)")
    fig.suptitle("Mean final test accuracy: learning rate x batch size (grey: no usable run)")
    return fig


def grid_curves_figure(curves: pd.DataFrame, configs: pd.DataFrame) -> Figure:
    """Mean test accuracy against epoch per configuration, one panel per activation set.

    Colour encodes the learning rate and the line style the batch size, with one shared key
    beside the panels (a legend per panel would list every configuration and hide the lines).
    """
    acts = sorted(configs["activations"].astype(str).unique())
    lrs = sorted(configs["lr"].unique())
    bss = sorted(configs["batch_size"].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(lrs), 1)))
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
    ncol = min(2, len(acts))
    nrow = math.ceil(len(acts) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(6 * ncol + 2.2, 3.8 * nrow), squeeze=False, sharey=True
    )
    for ax, act in zip(axes.flat, acts, strict=False):
        for _, r in configs[configs["activations"].astype(str) == act].iterrows():
            sub = curves[curves["run_id"].isin(r["run_ids"])]
            if sub.empty:
                continue
            m = sub.groupby("epoch")["test_acc"].mean() * 100
            ax.plot(
                m.index,
                m.values,
                color=colors[lrs.index(r["lr"])],
                ls=styles[bss.index(r["batch_size"]) % len(styles)],
                lw=1.2,
            )
        ax.set_title(f"activations: {act}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean test accuracy (%)")
    for ax in list(axes.flat)[len(acts) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colors[i], lw=2, label=f"lr {_lr_label(lr)}")
        for i, lr in enumerate(lrs)
    ]
    handles += [
        Line2D([], [], color="black", ls=styles[i % len(styles)], lw=1.2, label=f"batch {bs}")
        for i, bs in enumerate(bss)
    ]
    fig.suptitle("Test accuracy against epochs per configuration (mean over usable runs)")
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (6 * ncol + 2.2), 1))
    fig.legend(
        handles=handles,
        loc="center right",
        fontsize=8,
        title="colour: lr\nstyle: batch",
        title_fontsize=8,
        frameon=False,
    )
    return fig


def comparison_figure(
    means: Sequence[tuple[str, np.ndarray, tuple[float, float]]],
    diffs: Sequence[tuple[str, np.ndarray, tuple[float, float]]],
    *,
    reference: tuple[float, float],
    baseline_mean: float,
    method: str,
    confidence: float,
) -> Figure:
    """Bootstrap distributions of each configuration's mean overlaid (left, the report's
    interval shaded) and of each difference to the baseline (right, the gap to the report).
    Each item: (label, distribution, interval), fractions; drawn in percent."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lo, hi = reference
    axes[0].axvspan(lo, hi, color="0.6", alpha=0.35, lw=0, label="report's 99% interval")
    gap = (lo - baseline_mean * 100, hi - baseline_mean * 100)
    axes[1].axvspan(*gap, color="0.6", alpha=0.35, lw=0, label="report's interval - baseline")
    axes[1].axvline(0, color="k", lw=1)
    for ax, series, offset in ((axes[0], means, 0), (axes[1], diffs, 1)):
        for i, (label, dist, interval) in enumerate(series):
            color = colors[(i + offset) % len(colors)]
            d = np.asarray(dist) * 100
            if d.size > 1 and np.ptp(d) > 0:
                ax.hist(d, bins=60, density=True, histtype="stepfilled", alpha=0.25, color=color)
                ax.hist(d, bins=60, density=True, histtype="step", color=color, label=label)
                for q in interval:
                    ax.axvline(q * 100, color=color, ls="--", lw=1)
            else:
                ax.axvline(float(d.mean()) if d.size else 0.0, color=color, label=label)
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_xlabel("mean final test accuracy (%)")
    axes[1].set_xlabel("mean minus the baseline's mean (percentage points)")
    axes[0].set_title("bootstrap distribution of the mean")
    axes[1].set_title("difference to the baseline")
    fig.suptitle(
        f"Studies compared: {method} bootstrap, {confidence:.0%} {method} intervals dashed"
    )
    fig.tight_layout()
    return fig
