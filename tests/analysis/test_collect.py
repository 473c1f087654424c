"""Selecting runs from an MLflow store and building the one-row-per-run DataFrame."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.collect import load_study, parse_tags, resolve_tracking_uri
from analysis.errors import AnalysisError


def test_dataframe_matches_logged_runs(store) -> None:
    accs = [[0.98, 0.985, 0.99, 0.975, 0.97]]
    logged = store.study(accuracies=accs, diverged=[(0, 4)])
    study = load_study(store.uri)
    assert [r.info.run_id for r in study.top_runs] == [logged.top_run_id]
    runs = study.runs
    assert len(runs) == 5
    assert list(runs["seed"]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(runs["final_test_acc"], accs[0])
    assert list(runs["diverged"]) == [False, False, False, False, True]
    assert runs["params.optim.lr"].iloc[0] == pytest.approx(0.01)
    assert runs["params.trainer.batch_size"].iloc[0] == 25
    assert runs["params.model.activations"].iloc[0] == "[tanh,tanh,tanh]"
    assert set(runs["job_run_id"]) == {logged.job_run_ids[0]}
    counts = study.counts()
    assert counts["replica_runs"] == 5
    assert counts["diverged"] == 1
    assert counts["used"] == 4
    np.testing.assert_allclose(study.usable["final_test_acc"], accs[0][:4])
    assert study.study_name == "report"


@pytest.mark.parametrize("source", ["artifact", "metrics"])
def test_curves_from_either_source(store, source: str) -> None:
    store.study(seeds=3, epochs=40, eval_every=10)
    study = load_study(store.uri, curves=source)
    assert study.curves_missing == []
    assert len(study.curves) == 3 * 5  # epochs 0, 10, 20, 30, 40
    assert list(study.curves.columns) == [
        "run_id",
        "epoch",
        "train_loss",
        "test_loss",
        "train_acc",
        "test_acc",
    ]
    last = study.curves[study.curves["epoch"] == 40].set_index("run_id")["test_acc"]
    final = study.runs.set_index("run_id")["final_test_acc"]
    np.testing.assert_allclose(last.loc[final.index], final)


def test_missing_curves_csv_falls_back_to_metrics(store) -> None:
    store.study(seeds=2, curves_csv=False)
    study = load_study(store.uri, curves="artifact")
    assert study.curves_missing == []
    assert study.curves["run_id"].nunique() == 2


def test_default_is_latest_report_study(store) -> None:
    store.study(seeds=2)
    newer = store.study(seeds=3)
    store.study(experiment="quick", study="quick", seeds=2)  # newest, but not a report study
    study = load_study(store.uri, curves=None)
    assert study.top_runs[0].info.run_id == newer.top_run_id
    assert len(study.runs) == 3
    both = load_study(store.uri, tags={"mtl.study": "report"}, all_runs=True, curves=None)
    # Seeds 0 and 1 of the same configuration ran in both studies: counted once, the newer kept.
    assert len(both.runs) == 3 and len(both.duplicates) == 2
    assert set(both.runs["job_run_id"]) == {newer.job_run_ids[0]}
    assert both.counts()["replica_runs"] == 5


def test_select_by_experiment_run_id_and_tag(store, grid_configs) -> None:
    report = store.study(seeds=2)
    grid = store.study(experiment="grid", study="grid", configs=grid_configs[:4], seeds=2)
    by_exp = load_study(store.uri, experiment="grid", curves=None)
    assert by_exp.top_runs[0].info.run_id == grid.top_run_id
    assert len(by_exp.runs) == 8
    assert by_exp.runs["config_hash"].nunique() == 4
    by_job = load_study(store.uri, run_id=grid.job_run_ids[1], curves=None)
    assert len(by_job.runs) == 2
    by_tag = load_study(store.uri, tags=parse_tags(["mtl.study=report"]), curves=None)
    assert by_tag.top_runs[0].info.run_id == report.top_run_id
    assert set(by_exp.config_columns()) == {"params.optim.lr", "params.trainer.batch_size"}


def test_failed_job_is_counted(store, grid_configs) -> None:
    store.study(experiment="grid", study="grid", configs=grid_configs[:3], seeds=2, failed_jobs=[1])
    study = load_study(store.uri, experiment="grid", curves=None)
    counts = study.counts()
    assert counts["job_runs"] == 3
    assert counts["failed_jobs"] == 1
    assert counts["replica_runs"] == 4
    assert (
        "lr must be positive" in study.jobs.loc[study.jobs["status"] == "FAILED", "error"].iloc[0]
    )


def test_selection_errors_name_the_value(store, tmp_path) -> None:
    logged = store.study(seeds=2)
    with pytest.raises(AnalysisError, match=r"--experiment 'nope' does not exist.*report"):
        load_study(store.uri, experiment="nope")
    with pytest.raises(AnalysisError, match=r"no sweep or job run matches mtl.study=grid.*report"):
        load_study(store.uri, tags={"mtl.study": "grid"})
    with pytest.raises(AnalysisError, match=r"mtl.kind='replica'.*Its job run is"):
        load_study(store.uri, run_id=logged.replicas[0]["run_id"])
    with pytest.raises(AnalysisError, match=r"--run-id 'deadbeef' is not a run"):
        load_study(store.uri, run_id="deadbeef")
    with pytest.raises(AnalysisError, match=r"no MLflow store at .*missing.db"):
        resolve_tracking_uri(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(AnalysisError, match=r"--tag 'study' is not of the form key=value"):
        parse_tags(["study"])


def test_runs_of_a_newer_record_format_are_refused(store) -> None:
    from experiments.record_format import VERSION, Tag

    logged = store.study()
    replica = logged.replicas[0]["run_id"]
    store.client.set_tag(replica, Tag.FORMAT, str(int(VERSION) + 1))
    with pytest.raises(AnalysisError, match=f"record format {int(VERSION) + 1}.*up to {VERSION}"):
        load_study(store.uri)


def test_curves_from_metrics_read_each_curve_at_every_step_as_drawn(tmp_path) -> None:
    """Each curve keeps its own steps in the history (the harness thins them by shape):
    read back, every curve has every step, linear between its points, NaN kept as a gap."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from analysis.collect import _curves_from_metrics
    from experiments.record_format import CURVE_METRIC, VERSION

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    stored = {
        "train_loss": {0: 1.0, 40: 0.2},
        "test_loss": {0: 1.0, 10: 0.5, 40: 0.3},
        "train_acc": {0: 0.5, 20: 0.9, 40: 0.9},
        "test_acc": {0: 0.5, 20: float("nan"), 40: float("nan")},
    }
    metrics = [
        Metric(CURVE_METRIC[k], v, 0, s) for k, pts in stored.items() for s, v in pts.items()
    ]
    client.log_batch(run_id, metrics=metrics)
    df = _curves_from_metrics(client, run_id, VERSION)
    assert list(df["epoch"]) == [0, 10, 20, 40]
    np.testing.assert_allclose(df["train_loss"], [1.0, 0.8, 0.6, 0.2])
    np.testing.assert_allclose(df["test_loss"], [1.0, 0.5, 0.4333333333, 0.3])
    np.testing.assert_allclose(df["train_acc"], [0.5, 0.7, 0.9, 0.9])
    np.testing.assert_allclose(df["test_acc"], [0.5, np.nan, np.nan, np.nan])
