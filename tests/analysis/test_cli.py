"""The CLI and the report it writes, on stores built by the fixture (and on a real quick run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_study_end_to_end(store, tmp_path: Path, capsys) -> None:
    accs = [[0.98, 0.985, 0.99, 0.975, 0.97, 0.995]]
    logged = store.study(accuracies=accs, seeds=6, diverged=[(0, 5)])
    code, out, err = _run(
        capsys,
        *("--tracking-uri", store.uri, "--out", str(tmp_path / "reports"), "--name", "r1"),
        *("--n-resamples", "2000", "--grid-resamples", "1000"),
    )
    assert code == 0, err
    report = tmp_path / "reports" / "r1" / "report.md"
    assert out.rstrip().endswith(f"report: {report}")
    assert "report (published)         110" in out
    assert "this study, report method  5" in out  # 6 runs, 1 diverged and counted
    assert "1 diverged" in out
    assert "this study, standard       5" in out

    md = report.read_text()
    assert "| report (published) | 110 | n/a | [98.55, 98.63] | 0.080 |" in md
    # The report's std interval [0.53, 0.59]: its lower end and its middle, named as such.
    assert "with std 0.53 pp (the lower end of the report's std interval)" in md
    assert "with std 0.56 pp (the middle of the report's std interval) over 110 runs: " in md
    assert "2.576 x 0.56 / sqrt(110) = 0.138 pp half-width" in md and "x 0.55 /" not in md
    assert "activations tanh,tanh,tanh, loss MSE; 5 usable runs" in md
    assert "*Figure 1: train/test loss (MSE) against epoch" in md
    assert "ddof=1" in md and "n_test = 1000" in md and "sqrt(n/m)" in md
    assert "m = 5 here, not the report's 100 (only 5 usable runs)" in md
    assert f"`{logged.top_run_id}` (job, FINISHED)" in md
    assert "`python -m experiments.train experiment=report`" in md
    assert "`0123456789abcdef0123456789abcdef01234567`" in md and "(dirty: )" not in md
    for name in ("fig1_loss", "fig2_accuracy", "bootstrap"):
        assert f"](figures/{name}.png)" in md
        assert (report.parent / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (report.parent / "figures" / f"{name}.svg").stat().st_size > 10_000
    # matplotlib writes each text as a comment beside its glyphs: the axis label is readable.
    assert "loss (MSE, log scale)" in (report.parent / "figures" / "fig1_loss.svg").read_text()

    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["counts"]["diverged"] == 1 and summary["counts"]["used"] == 5
    assert summary["final_test_acc"] == pytest.approx(accs[0][:5])
    boot = summary["bootstrap"]["standard"]
    assert boot["method"] == "BCa" and boot["n_resamples"] == 2000
    assert boot["mean"]["estimate"] == pytest.approx(sum(accs[0][:5]) / 5)

    client = MlflowClient(store.uri)
    run = client.get_run(summary["analysis"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mtl.kind"] == "analysis"
    assert run.data.tags["mtl.study"] == "report"
    assert run.data.tags["mtl.analysed_run_ids"] == logged.top_run_id
    assert run.data.metrics["report_method.mean_estimate"] == pytest.approx(
        boot["mean"]["estimate"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "summary.json", "figures"} <= artifacts
    # The analysis run is not mistaken for part of the study by a second analysis.
    code, out, _ = _run(capsys, "--tracking-uri", store.uri, "--out", str(tmp_path / "b"),
                        "--n-resamples", "1000", "--no-mlflow", "-q")  # fmt: skip
    assert code == 0 and "this study, report method  5" in out


def test_grid_sweep(store, grid_configs, tmp_path: Path, capsys) -> None:
    store.study(
        experiment="grid",
        study="grid",
        configs=grid_configs,
        seeds=2,
        diverged=[(4, 0)],
        failed_jobs=[11],
    )
    code, out, err = _run(
        capsys,
        *("--tracking-uri", store.uri, "--experiment", "grid", "--out", str(tmp_path)),
        *("--n-resamples", "1000", "--grid-resamples", "1000", "--method", "percentile"),
        "--no-mlflow",
    )
    assert code == 0, err
    assert "lr 0.01, batch 25, tanh,tanh,tanh: 2 runs" in out  # the report's config headlines
    assert "1 failed job(s)" in out
    report = Path(out.rstrip().rsplit("report: ", 1)[1])
    md = report.read_text()
    assert "## Grid search" in md and "## Failed job runs" in md
    assert "| 1 | 0.001 | 10 | tanh,tanh,tanh | 2/2 | 0 | 0 |" in md
    assert md.count("\n| ") - md.count("\n| rank") >= 12  # every config has a row
    for name in ("grid_ranked", "grid_heatmap", "grid_accuracy_vs_epochs"):
        assert (report.parent / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "--experiment 'nope' does not exist"),
        (["--tag", "mtl.study=grid"], "no sweep or job run matches mtl.study=grid"),
        (["--tag", "oops"], "--tag 'oops' is not of the form key=value"),
        (["--confidence", "1.5"], "--confidence 1.5 must be strictly between 0 and 1"),
        (["--name", "a/b"], "--name 'a/b' must be a plain directory name"),
    ],
)
def test_bad_input_exits_2_with_one_message(store, capsys, args, message) -> None:
    store.study(seeds=2)
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--n-resamples", "1000", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


def test_no_usable_run_is_an_error_with_counts(store, capsys) -> None:
    store.study(seeds=2, diverged=[(0, 0), (0, 1)])
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--no-mlflow")
    assert code == 2 and out == ""
    assert "has 2 or more usable (finished, not diverged) runs" in err
    assert "lr 0.01, batch 25, tanh,tanh,tanh: 0/2" in err


def test_missing_store_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("minitorch-analysis: error: no MLflow store at")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "none.db").exists()  # not silently created


@pytest.mark.slow
def test_quick_multirun_then_analysis(tmp_path: Path, capsys, _empty_store: Path) -> None:
    """The harness's quick preset as a multirun (real writer, MAE loss), then the CLI on its
    store (real reader, in this process: a second interpreter would only re-import)."""
    # An empty store with MLflow's schema already made: the harness skips 1-2 s of migrations
    # (making a store is tested in tests/experiments).
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    train = subprocess.run(
        [
            sys.executable,
            *("-m", "experiments.train", "-m", "experiment=quick"),
            "trainer.batch_size=10,25",  # batch size cannot share a job: 2 jobs
            "model.loss=mae",  # the figures and the report must name it, not say MSE
            f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp_path}/multirun",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    code, out, err = _run(
        capsys,
        *("--tracking-uri", uri, "--tag", "mtl.study=quick"),
        *("--out", str(tmp_path / "reports"), "--n-resamples", "10000"),
    )
    assert code == 0, err[-3000:]
    assert "report (published)" in out and "this study, report method" in out
    report = Path(out.rstrip().rsplit("report: ", 1)[1])
    assert report.is_file() and (report.parent / "summary.json").is_file()
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["counts"]["job_runs"] == 2
    assert summary["loss"] == "MAE" and {c["loss"] for c in summary["configs"]} == {"MAE"}
    figs = report.parent / "figures"
    assert (figs / "grid_heatmap.png").is_file()
    # matplotlib writes each text as a comment beside its glyphs: the axis label is readable.
    svg = (figs / "fig1_loss.svg").read_text()
    assert "loss (MAE, log scale)" in svg and "MSE" not in svg
    md = report.read_text()
    assert ", loss MAE; 3 usable runs" in md and "*Figure 1: train/test loss (MAE) against" in md
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`mtl.kind` = 'analysis'"
    )
    assert len(runs) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-resamples", "1"], "--n-resamples 1 is too few resamples for a 99% interval"),
        (["--n-resamples", "999"], "--n-resamples 999 is too few resamples for a 99% interval"),
        (["--grid-resamples", "1"], "--grid-resamples 1 is too few resamples"),
        (
            ["--n-resamples", "1e12"],
            "--n-resamples 1,000,000,000,000 is more resamples than this analysis computes in "
            "reasonable time and memory (~50,000.0 GB at ~50 bytes each); accepted: 1,000 to "
            "10,000,000 (measured times and memory: benchmarks/README.md).",
        ),
        (["--n-resamples", "10000001"], "accepted: 1,000 to 10,000,000"),
        (["--grid-resamples", "2e6"], "--grid-resamples 2,000,000 is more resamples"),
        (["--grid-resamples", "999"], "accepted: 1,000 to 1,000,000"),
        (["--resample-size", "1"], "--resample-size 1 is too small"),
    ],
)
def test_bootstrap_settings_refused_before_reading_the_store(tmp_path, capsys, args, message):
    # The store does not exist: the settings are refused before it is looked for.
    code, out, err = _run(capsys, "--tracking-uri", f"sqlite:///{tmp_path}/no.db", *args)
    assert code == 2 and out == ""
    assert err.startswith("minitorch-analysis: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_resample_size_larger_than_the_runs_is_refused(store, capsys) -> None:
    store.study(seeds=20)
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--resample-size", "1000",
                          "--n-resamples", "1000", "--grid-resamples", "1000", "-q")  # fmt: skip
    assert code == 2 and out == ""
    assert (
        "--resample-size 1000 is larger than the 20 usable runs of lr 0.01, batch 25, "
        "tanh,tanh,tanh: resamples of m > n values give an interval about sqrt(m/n) = 7.1x "
        "narrower than 20 runs support. Accepted: 2 to 20; the default is 100, or n when there "
        "are fewer runs."
    ) in err
    assert err.count("\n") == 1
