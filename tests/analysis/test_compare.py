"""``python -m analysis --compare``: studies side by side, on stores with known accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.__main__ import main

SEEDS = 12
# Exact study: mean 0.9800. The report-derivative study: the same seeds + 0.0040 + noise that
# sums to zero, so the true (paired and unpaired) difference is 0.40 pp and its mean 98.40 %.
EXACT = 0.98 + np.linspace(-0.006, 0.006, SEEDS)
NOISE = np.tile([0.001, -0.001], SEEDS // 2)
FAITHFUL = EXACT + 0.004 + NOISE


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _two_studies(store, faithful=FAITHFUL, seeds: int = SEEDS) -> tuple:
    exact = store.study(
        experiment="report",
        study="report",
        accuracies=[EXACT],
        seeds=SEEDS,
        curves_csv=False,
        params={"model.tanh_grad": "exact", "tracking.experiment": "report"},
    )
    faithful_run = store.study(
        experiment="report_faithful",
        study="report_faithful",
        accuracies=[faithful],
        seeds=seeds,
        curves_csv=False,
        params={"model.tanh_grad": "report", "tracking.experiment": "report_faithful"},
    )
    return exact, faithful_run


def _compare(capsys, store, tmp_path: Path, *items: str) -> tuple[int, str, str, Path]:
    out_dir = tmp_path / "reports"
    code, out, err = _run(
        capsys,
        *("--compare", *items, "--tracking-uri", store.uri, "--out", str(out_dir)),
        *("--name", "cmp", "--n-resamples", "1000", "--no-mlflow", "-q"),
    )
    return code, out, err, out_dir / "cmp"


def test_compare_two_studies_paired(store, tmp_path: Path, capsys) -> None:
    exact, faithful = _two_studies(store)
    # Given in the "wrong" order: the baseline is still the exact study.
    code, out, err, d = _compare(capsys, store, tmp_path, "report_faithful", "report")
    assert code == 0, err
    lines = {ln.split("  ")[0]: ln for ln in out.splitlines()}
    base = lines[f"report ({exact.top_run_id[:8]})"]
    assert "baseline (exact)" in base and " 12 " in base and "98.00" in base
    row = lines[f"report_faithful ({faithful.top_run_id[:8]})"]
    assert "model.tanh_grad=report  " in row  # tracking.* is not a training difference
    assert "98.40" in row and "+0.40" in row
    assert "report (published)" in lines and "[98.55, 98.63]" in lines["report (published)"]
    assert "paired by seed (12 pairs)" in out

    summary = json.loads((d / "summary.json").read_text())
    assert summary["kind"] == "comparison" and len(summary["rows"]) == 2
    first, second = summary["rows"]
    assert first["study"] == "report_faithful" and not first["baseline"]
    assert second["baseline"] and second["diff_to_baseline"]["estimate"] == 0
    assert first["differs"] == {"model.tanh_grad": {"value": "report", "baseline": "exact"}}
    assert first["n"] == SEEDS and first["seeds"] == list(range(SEEDS))
    assert first["standard"]["mean"]["estimate"] == pytest.approx(FAITHFUL.mean())
    assert first["report_method"]["resample_size"] == SEEDS
    diff = first["diff_to_baseline"]
    assert diff["estimate"] == pytest.approx(0.004)
    assert diff["low"] < 0.004 < diff["high"] and diff["high"] - diff["low"] < 0.002
    assert diff["pairing"] == "paired by seed (12 pairs)" and diff["method"] == "BCa"
    assert first["in_report_interval"] is False

    md = (d / "report.md").read_text()
    assert "## Why our mean differs from the report's" in md
    assert "**model.tanh_grad=report**" in md
    assert "effect +0.40 pp" in md and "different from zero" in md
    assert "Alone it does not bring the mean into the report's interval" in md
    assert "None of these configurations brings the mean into the report's interval" in md
    assert "closes 73% of the distance" in md  # 0.40 of the 0.55 pp to 98.55
    assert "](figures/compare_bootstrap.png)" in md
    assert (d / "figures" / "compare_bootstrap.png").stat().st_size > 10_000


def test_compare_independent_and_into_report_interval(store, tmp_path: Path, capsys) -> None:
    # 10 seeds against 12: not the same seeds, so the two are resampled independently.
    faithful = (EXACT + 0.007)[:10]  # mean 98.60 %, inside [98.55, 98.63]
    exact, other = _two_studies(store, faithful=faithful, seeds=10)
    code, out, err, d = _compare(capsys, store, tmp_path, exact.top_run_id, other.top_run_id)
    assert code == 0, err
    assert "independent (10 and 12 runs resampled separately)" in out
    row = json.loads((d / "summary.json").read_text())["rows"][1]
    true_diff = faithful.mean() - EXACT.mean()
    assert row["diff_to_baseline"]["estimate"] == pytest.approx(true_diff)
    assert row["diff_to_baseline"]["low"] < true_diff < row["diff_to_baseline"]["high"]
    assert row["in_report_interval"] is True
    md = (d / "report.md").read_text()
    assert "Alone it brings the mean into the report's interval" in md
    assert "Into the report's interval: model.tanh_grad=report." in md


def test_compare_needs_two_studies(store, tmp_path: Path, capsys) -> None:
    _two_studies(store)
    code, out, err, _ = _compare(capsys, store, tmp_path, "report")
    assert code == 2 and out == ""
    assert "--compare needs at least two studies to compare" in err
    assert err.count("\n") == 1  # one paragraph

    code, _, err, _ = _compare(capsys, store, tmp_path, "report", "report")
    assert code == 2 and "more than once" in err

    code, _, err, _ = _compare(capsys, store, tmp_path, "report", "no_such_study")
    assert code == 2 and "--compare 'no_such_study' is neither a 32-hex run id" in err

    code, _, err, _ = _compare(capsys, store, tmp_path)
    assert code == 2 and "needs --experiment NAME" in err
