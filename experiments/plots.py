"""Per-replica loss and accuracy figures, drawn fast enough for 110 replicas per job.

All replicas of a job share one figure with the same axes (limits from all of them, so the
figures compare at a glance). Axes, ticks and legend are rendered once; each replica only
draws its two lines and a label onto that background and is written straight to PNG.
A full `savefig` per replica cost ~55 ms (mostly text layout); this costs a few ms.
No pyplot: no global state and no GUI backend.
"""

from __future__ import annotations

from pathlib import Path

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


class CurveFigure:
    """Train and test curves against epochs on fixed axes, redrawn cheaply per replica."""

    def __init__(
        self,
        *,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        ylabel: str,
        log: bool = False,
        legend: str = "upper right",
        dpi: int = 80,
    ) -> None:
        self.fig = Figure(figsize=(5.0, 3.2), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        # Fixed margins: a layout engine would re-solve the layout on every draw.
        self.fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.95)
        self.ax = self.fig.add_subplot()
        # animated: left out of the background render, drawn per replica with draw_artist.
        (self.train,) = self.ax.plot([], [], label="train", lw=1.2, animated=True)
        (self.test,) = self.ax.plot([], [], label="test", lw=1.2, animated=True)
        self.label = self.ax.text(
            0.02, 0.97, "", transform=self.ax.transAxes, va="top", animated=True
        )
        self.ax.set_yscale("log" if log else "linear")
        self.ax.set_xlim(*xlim)
        self.ax.set_ylim(*ylim)
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel(ylabel)
        self.ax.grid(alpha=0.3)
        self.ax.legend(loc=legend)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)

    def save(self, path: Path, x: np.ndarray, train: np.ndarray, test: np.ndarray, label: str):
        """Write the replica's curves (NaN points, e.g. after divergence, are gaps) to `path`."""
        self.canvas.restore_region(self.background)
        self.train.set_data(x, train)
        self.test.set_data(x, test)
        self.label.set_text(label)
        for artist in (self.train, self.test, self.label):
            self.ax.draw_artist(artist)
        rgba = np.asarray(self.canvas.buffer_rgba())
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba[..., :3]).save(path, format="png", compress_level=1)


class ReplicaFigures:
    """figures/loss.png and figures/accuracy.png for every replica of one job, on shared axes."""

    def __init__(self, curves: dict[str, np.ndarray], keep: np.ndarray, dpi: int = 80) -> None:
        """`curves`: epoch [E] and train/test loss/acc [R, E]; `keep` [R] bool: the replicas
        whose values set the axis limits (the non-diverged ones, if any)."""
        keep = keep if keep.any() else np.ones_like(keep)
        x = curves["epoch"]
        xlim = (float(x[0]), float(max(x[-1], x[0] + 1)))
        loss = np.stack([curves["train_loss"][keep], curves["test_loss"][keep]])
        acc = 100 * np.stack([curves["train_acc"][keep], curves["test_acc"][keep]])
        self.loss = CurveFigure(
            xlim=xlim, ylim=_limits(loss, log=True), ylabel="loss", log=True, dpi=dpi
        )
        self.acc = CurveFigure(
            xlim=xlim,
            ylim=_limits(acc, log=False, floor=100.0),
            ylabel="accuracy (%)",
            legend="lower right",
            dpi=dpi,
        )

    def save(self, folder: Path, curves: dict[str, np.ndarray], r: int, label: str) -> None:
        """Write replica r's two figures into `folder`."""
        x = curves["epoch"]
        self.loss.save(
            folder / "loss.png", x, curves["train_loss"][r], curves["test_loss"][r], label
        )
        self.acc.save(
            folder / "accuracy.png",
            x,
            100 * curves["train_acc"][r],
            100 * curves["test_acc"][r],
            label,
        )
