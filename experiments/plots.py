"""Per-replica loss and accuracy figures, drawn fast enough for 110 replicas per job.

All replicas of a job share one figure with the same axes (limits from all of them, so the
figures compare at a glance). Axes, ticks and legend are rendered once; each replica only
draws its four lines and a label onto that background and is written straight to PNG.
A full `savefig` per replica cost ~55 ms (mostly text layout); this costs a few ms.

A process draws every job's figures on the same two Figures (`_reused`), changing only their
data, limits and texts: building the axes and ticks anew cost more than drawing them (job
figure ~140 -> ~80 ms, replica background ~200 -> ~70 ms on a grid job), and what they draw is
the same, pixel for pixel (tests/experiments/test_plots.py). The worker draws the replicas'
background before forking the job's artifact writer (records.Forked), which draws each
replica's lines and label on it (plain text only: `ReplicaFigures.save`) while the worker
draws the job figure. No pyplot: no global state and no GUI backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def _limits(values: np.ndarray, log: bool, floor: float | None = None) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if log:
        finite = finite[finite > 0]
    if finite.size == 0:
        return (1e-3, 1.0) if log else (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if floor is not None:
        hi = max(hi, floor)
    if log:
        return lo / 1.3, hi * 1.3
    pad = 0.04 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _panel(ax, *, ylabel: str, log: bool, legend: str) -> tuple:
    """One panel's fixed axes, and its train and test lines (animated: drawn per replica)."""
    (train,) = ax.plot([], [], label="train", lw=1.2, animated=True)
    (test,) = ax.plot([], [], label="test", lw=1.2, animated=True)
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    return train, test


_reused: dict[tuple[str, int], Any] = {}  # ("replica" | "job", dpi) -> this process's figure


class ReplicaFigures:
    """figures/curves.png for every replica of a job: its loss (log scale) and accuracy curves
    side by side, on the axes all the job's replicas share. One per process and resolution
    (`replica_figures`): `prepare` draws a job's background (axes, ticks, legend), `save` one
    replica's lines and label on it."""

    def __init__(self, dpi: int = 80) -> None:
        self.fig = Figure(figsize=(9.0, 3.2), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        # Fixed margins: a layout engine would re-solve the layout on every draw.
        self.fig.subplots_adjust(left=0.08, right=0.975, bottom=0.15, top=0.95, wspace=0.22)
        loss_ax, acc_ax = self.fig.subplots(1, 2)
        self.lines = _panel(loss_ax, ylabel="loss", log=True, legend="upper right") + _panel(
            acc_ax, ylabel="accuracy (%)", log=False, legend="lower right"
        )
        # Plain text, never mathtext: see `save`.
        self.label = loss_ax.text(0.02, 0.97, "", transform=loss_ax.transAxes, va="top",
                                  animated=True, parse_math=False)  # fmt: skip
        self.background = None

    def prepare(self, curves: dict[str, np.ndarray], keep: np.ndarray) -> ReplicaFigures:
        """Draw the background of a job's figures. `curves`: epoch [E] and train/test loss/acc
        [R, E]; `keep` [R] bool: the replicas whose values set the axis limits (the
        non-diverged ones, if any)."""
        keep = keep if keep.any() else np.ones_like(keep)
        x = curves["epoch"]
        loss = np.stack([curves["train_loss"][keep], curves["test_loss"][keep]])
        acc = 100 * np.stack([curves["train_acc"][keep], curves["test_acc"][keep]])
        loss_ax, acc_ax = self.fig.axes
        for ax in (loss_ax, acc_ax):
            ax.set_xlim(float(x[0]), float(max(x[-1], x[0] + 1)))
        loss_ax.set_ylim(*_limits(loss, log=True))
        acc_ax.set_ylim(*_limits(acc, log=False, floor=100.0))
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        return self

    def save(self, path: Path, curves: dict[str, np.ndarray], r: int, label: str) -> None:
        """Write replica r's figure to `path` (NaN points, e.g. after divergence, are gaps).
        It draws lines and plain text only, so a forked child may save while its parent draws:
        the child gets new fonts for text (matplotlib clears its font cache in a forked child),
        but mathtext (the log axis's tick labels) keeps fonts whose open files the two
        processes would share, corrupting glyphs ("FT_Load_Glyph ... invalid outline")."""
        assert self.background is not None, "prepare() first"
        self.canvas.restore_region(self.background)
        x = curves["epoch"]
        values = (curves["train_loss"][r], curves["test_loss"][r],
                  100 * curves["train_acc"][r], 100 * curves["test_acc"][r])  # fmt: skip
        for line, y in zip(self.lines, values, strict=True):
            line.set_data(x, y)
        self.label.set_text(label)
        for artist in (*self.lines, self.label):
            artist.axes.draw_artist(artist)
        rgba = np.asarray(self.canvas.buffer_rgba())
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba[..., :3]).save(path, format="png", compress_level=1)


def replica_figures(
    curves: dict[str, np.ndarray], keep: np.ndarray, dpi: int = 80
) -> ReplicaFigures:
    """This process's replica figures, prepared for a job's curves (see ReplicaFigures)."""
    if ("replica", dpi) not in _reused:
        _reused["replica", dpi] = ReplicaFigures(dpi)
    return _reused["replica", dpi].prepare(curves, keep)


def _band(ax, x, values: np.ndarray, color: str, label: str, seeds: bool) -> None:
    """Mean (over the replicas alive at each point), a mean +- sd band and, if `seeds`,
    every replica as a faint line."""
    import warnings

    with warnings.catch_warnings():  # a point where every replica is NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        sd = np.nanstd(values, axis=0) if values.shape[0] > 1 else np.zeros_like(mean)
    if seeds:
        alpha = max(0.04, min(0.3, 4.0 / max(values.shape[0], 1)))
        ax.plot(x, values.T, color=color, lw=0.5, alpha=alpha)
    ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
    ax.plot(x, mean, color=color, lw=1.6, label=label)


def job_figure(
    path: Path,
    curves: dict[str, np.ndarray],
    title: str,
    loss_name: str = "loss",
    dpi: int = 80,
) -> None:
    """A job at a glance: loss and accuracy against epochs, train and test, each as the mean
    over the replicas with a mean +- sd band, and every replica's test curve as a faint line."""
    if ("job", dpi) not in _reused:
        _reused["job", dpi] = _job_axes(dpi)
    fig = _reused["job", dpi]
    x = curves["epoch"]
    loss_ax, acc_ax = fig.axes
    for ax, kind, scale in ((loss_ax, "loss", 1.0), (acc_ax, "acc", 100.0)):
        for artist in [*ax.lines, *ax.collections]:  # the previous job's
            artist.remove()
        _band(ax, x, scale * curves[f"train_{kind}"], "C0", "train: mean, ±sd", seeds=False)
        _band(ax, x, scale * curves[f"test_{kind}"], "C1", "test: mean, ±sd, seeds", seeds=True)
        ax.relim()
        ax.autoscale()
    loss_ax.set_ylabel(f"{loss_name} (log scale)")
    loss_ax.legend(loc="upper right")
    acc = 100 * np.concatenate([curves["train_acc"].ravel(), curves["test_acc"].ravel()])
    lo, hi = _limits(acc[-max(acc.size // 2, 1) :], log=False, floor=100.0)
    acc_ax.set_ylim(max(lo, 0.0), min(hi, 100.5))
    acc_ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", pil_kwargs={"compress_level": 1})


def _job_axes(dpi: int) -> Figure:
    """The job figure without data: two panels, loss on a log scale."""
    fig = Figure(figsize=(10.0, 3.6), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.15, top=0.86, wspace=0.25)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    loss_ax.set_yscale("log")
    acc_ax.set_ylabel("accuracy (%)")
    return fig


def jobs_figure(path: Path, rows: list[dict], title: str, dpi: int = 80) -> None:
    """A sweep's jobs ranked by mean final test accuracy: one row each (best at the top), the
    mean as a dot and min..max over its seeds as a line. `rows`: name, mean, min, max."""
    rows = [r for r in rows if r["mean"] == r["mean"]]
    n = max(len(rows), 1)
    height = 1.3 + 0.19 * n
    fig = Figure(figsize=(8.0, height), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.62 / height, top=1 - 0.5 / height)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    means = np.array([100 * r["mean"] for r in rows])
    lo = np.array([100 * r["min"] for r in rows])
    hi = np.array([100 * r["max"] for r in rows])
    ax.hlines(y, lo, hi, color="0.6", lw=1.2, label="min..max over seeds")
    ax.plot(means, y, "o", color="C1", ms=4, label="mean")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("final test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    if rows:
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
