"""Figures: they exist, are non-empty PNG and SVG, and carry the expected labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.bootstrap import m_out_of_n_bootstrap, scipy_bootstrap


def _curves(n_runs: int = 4, epochs: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ep = np.arange(0, epochs + 1, 10)
    rows = []
    for r in range(n_runs):
        acc = 0.5 + 0.48 * (1 - np.exp(-ep / 30)) + rng.normal(0, 0.003, ep.size)
        loss = 0.5 * np.exp(-ep / 40) + 0.02
        rows.append(
            pd.DataFrame(
                {
                    "run_id": f"run{r}",
                    "epoch": ep,
                    "train_loss": loss * 0.9,
                    "test_loss": loss,
                    "train_acc": acc + 0.005,
                    "test_acc": acc,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _configs() -> pd.DataFrame:
    rows = []
    for act in ("tanh,tanh,tanh", "relu,relu,relu"):
        for lr in (0.001, 0.01):
            for bs in (10, 25):
                mean = 0.9 + 0.05 * (act[0] == "t") - lr
                rows.append(
                    {
                        "lr": lr,
                        "batch_size": bs,
                        "activations": act,
                        "label": f"lr {lr:g}, batch {bs}, {act}",
                        "n_runs": 4,
                        "n_used": 4,
                        "n_diverged": 0,
                        "n_failed": 0,
                        "failed_job": False,
                        "mean": mean,
                        "low": mean - 0.01,
                        "high": mean + 0.01,
                        "run_ids": [f"run{i}" for i in range(4)],
                    }
                )
    rows[-1].update(n_used=0, n_diverged=4, mean=np.nan, low=np.nan, high=np.nan, run_ids=[])
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("loss", "label"),
    [
        ("mse", "loss (MSE, log scale)"),
        ("MAE", "loss (MAE, log scale)"),
        (None, "loss (log scale)"),
    ],
)
def test_loss_axis_names_the_runs_loss(loss, label) -> None:
    assert figures.loss_label(loss) == label


def _saved(fig, tmp_path: Path, stem: str) -> None:
    png = figures.save(fig, tmp_path, stem)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    svg = png.with_suffix(".svg")
    assert svg.stat().st_size > 10_000 and b"<svg" in svg.read_bytes()[:500]


def test_curve_figures(tmp_path: Path) -> None:
    figs = figures.curve_figures(
        _curves(), "run0", 0, confidence=0.99, setting="lr 0.01", loss="mae"
    )
    assert set(figs) == {"fig1_loss", "fig2_accuracy"}
    loss, acc = figs["fig1_loss"].axes, figs["fig2_accuracy"].axes
    assert loss[0].get_ylabel() == "loss (MAE, log scale)" and loss[0].get_yscale() == "log"
    assert acc[0].get_ylabel() == "accuracy (%)"
    assert [a.get_xlabel() for a in loss + acc] == ["epoch"] * 4
    assert loss[1].get_title() == "mean over 4 runs, pointwise t-interval"
    labels = [t.get_text() for t in acc[1].get_legend().get_texts()]
    assert labels == ["train mean", "train 99% CI of mean", "test mean", "test 99% CI of mean"]
    # Accuracy is drawn in percent: the plotted final test mean is near 98, not 0.98.
    y = acc[1].get_lines()[1].get_ydata()
    assert 90 < y[-1] < 100
    for stem, fig in figs.items():
        _saved(fig, tmp_path, stem)


def test_mean_band_is_a_t_interval() -> None:
    c = _curves(n_runs=5)
    band = figures.mean_band(c, "test_acc", 0.99)
    last = c[c["epoch"] == 100]["test_acc"]
    half = 4.604 * last.std(ddof=1) / np.sqrt(5)  # t_{0.995, 4} = 4.604
    assert band.loc[100, "high"] - band.loc[100, "mean"] == pytest.approx(half, rel=1e-3)


def test_bootstrap_figure(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(0.986, 0.0055, 110)
    res = [m_out_of_n_bootstrap(x, n_resamples=5000), scipy_bootstrap(x, n_resamples=5000)]
    fig = figures.bootstrap_figure(res, reference={"mean": (98.55, 98.63), "std": (0.53, 0.59)})
    ax_mean, ax_std = fig.axes
    assert ax_mean.get_xlabel() == "mean test accuracy over a resample (%)"
    assert "percentage points, ddof=1" in ax_std.get_xlabel()
    assert ax_mean.get_ylabel() == "density"
    # Interval marks: 2 dashed lines per method, at the interval ends in percent.
    lines = ax_mean.get_lines()
    dashed = [
        ln.get_xdata()[0] for ln in lines if ln.get_linestyle() == "--" and len(ln.get_xdata())
    ]
    assert sorted(dashed)[:1] == pytest.approx([min(r.mean.low for r in res) * 100])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "report interval" in legend
    _saved(fig, tmp_path, "bootstrap")


def test_bootstrap_figure_with_point_interval(tmp_path: Path) -> None:
    res = [m_out_of_n_bootstrap(np.full(10, 0.97), n_resamples=100)]
    fig = figures.bootstrap_figure(res)
    assert any("point" in t.get_text() for t in fig.legends[0].get_texts())
    _saved(fig, tmp_path, "point")


def test_grid_figures(tmp_path: Path) -> None:
    configs = _configs()
    ranked = figures.ranked_figure(configs, confidence=0.99, method="BCa")
    ax = ranked.axes[0]
    assert ax.get_xlabel() == "final test accuracy (%)"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[-1].startswith("lr 0.001, batch 10, tanh,tanh,tanh")  # best at the top
    assert "4 diverged, no usable run" in ticks[0]
    _saved(ranked, tmp_path, "ranked")

    heat = figures.heatmap_figure(configs)
    panels = [a for a in heat.axes if a.get_title().startswith("activations")]
    assert [a.get_title() for a in panels] == [
        "activations: relu,relu,relu",
        "activations: tanh,tanh,tanh",
    ]
    assert {a.get_xlabel() for a in panels} == {"batch size (samples)"}
    assert {a.get_ylabel() for a in panels} == {"learning rate"}
    assert heat.axes[-1].get_ylabel() == "mean final test accuracy (%)"  # the colour bar
    _saved(heat, tmp_path, "heat")

    curves = figures.grid_curves_figure(_curves(), configs)
    assert [a.get_ylabel() for a in curves.axes if a.get_visible()] == [
        "mean test accuracy (%)"
    ] * 2
    assert curves.axes[0].get_xlabel() == "epoch"
    _saved(curves, tmp_path, "curves")
