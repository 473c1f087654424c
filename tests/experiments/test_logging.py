"""What a job logs to MLflow, and how its runs end (FINISHED, FAILED, KILLED)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from experiments import plots, record_format, training
from experiments.record_format import (
    CURVE_METRIC,
    CURVES,
    DIVERGED_EPOCH,
    DIVERGED_METRIC,
    FINAL,
    MEAN,
    STATS,
    TEST_ACC_MEAN,
    time_key,
)
from experiments.tracking import Tracker, retry
from experiments.train import JobContext, Progress, run
from tests.experiments.conftest import compose_cfg, run_app, runs_by_kind, sqlite_uri

REPLICA_METRICS = sorted([*CURVE_METRIC.values(), *FINAL.values(), DIVERGED_METRIC, DIVERGED_EPOCH])
ARTIFACTS = ["config.yaml", "curves.csv", "figures/curves.png", "weights.pt"]
# Params are what the run computes; how it ran is in mtl.cfg.* tags.
PARAMS = {
    "model.hidden",
    "model.activations",
    "model.init",
    "model.loss",
    "model.tanh_grad",
    "optim.name",
    "optim.lr",
    "data.name",
    "data.n_train",
    "data.n_test",
    "data.encoding",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.eval_every",
    "acts",
    "log10_lr",
}
EXECUTION_TAGS = {
    f"mtl.cfg.{k}"
    for k in (
        "trainer.threads",
        "trainer.workers",
        "trainer.progress",
        "trainer.checkpoint_every",
        "trainer.checkpoint_dir",
        "tracking.uri",
        "tracking.experiment",
        "tracking.replica_figures",
        "tracking.replica_weights",
        "tracking.figure_dpi",
        "tracking.server_timeout_s",
        "tracking.retry_s",
        "tracking.rerun",
    )
}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(out)


def _in_process(tmp_path, *overrides: str) -> tuple[float, MlflowClient]:
    cfg = compose_cfg(
        "experiment=quick",
        f"tracking.uri={sqlite_uri(tmp_path)}",
        "trainer.progress=false",
        f"trainer.checkpoint_dir={tmp_path}/ckpt",
        *overrides,
    )
    ctx = JobContext(study="quick", overrides=list(overrides), output_dir=str(tmp_path / "job"))
    score = run(cfg, ctx)
    return score, MlflowClient(sqlite_uri(tmp_path))


def test_quick_run_logs_exactly_the_described_runs(tmp_path):
    uri = sqlite_uri(tmp_path)
    proc = run_app(tmp_path, "experiment=quick", f"tracking.uri={uri}")
    assert proc.returncode == 0, proc.stderr
    assert "model:" in proc.stdout and "replicas: 3" in proc.stdout  # the config is printed
    client = MlflowClient(uri)
    kinds = runs_by_kind(client, "quick")
    assert sorted(kinds) == ["job", "replica"]
    (job,) = kinds["job"]
    replicas = sorted(kinds["replica"], key=lambda r: int(r.data.tags["mtl.seed"]))
    assert [r.data.params["seed"] for r in replicas] == ["0", "1", "2"]

    assert job.info.status == "FINISHED"
    assert {r.data.tags["mtl.format"] for r in [job, *replicas]} == {record_format.VERSION}
    assert job.data.tags["mtl.study"] == "quick"
    assert job.data.tags["mtl.overrides"] == f"experiment=quick tracking.uri={uri}"
    assert job.data.tags["mtl.command"].startswith("python -m experiments.train experiment=quick")
    assert job.data.tags["mtl.torch_threads"] == "1"
    assert len(job.data.tags["mtl.git_commit"]) in (40, len("unknown"))
    assert "mtl.sweep_run_id" not in job.data.tags and "mlflow.parentRunId" not in job.data.tags
    assert set(job.data.params) == PARAMS | {"replicas"}
    assert set(job.data.tags) >= EXECUTION_TAGS
    assert job.data.params["model.activations"] == "[tanh,tanh,tanh]"
    assert (job.data.params["acts"], job.data.params["log10_lr"]) == ("TTT", "-2")
    finals = [r.data.metrics[FINAL["test_acc"]] for r in replicas]
    # exact fractions k / n_test: the mean is the total count over all points, no float noise
    n_test = int(job.data.params["data.n_test"])
    assert all(round(f * n_test) / n_test == f for f in finals)
    assert job.data.metrics[TEST_ACC_MEAN] == round(sum(finals) * n_test) / (3 * n_test)
    assert job.data.metrics[STATS["test_acc_std"]] == pytest.approx(np.std(finals, ddof=1))
    assert job.data.metrics[STATS["test_acc_min"]] == min(finals)
    assert job.data.metrics[STATS["test_acc_max"]] == max(finals)
    assert (job.data.metrics[STATS["n_replicas"]], job.data.metrics[STATS["n_diverged"]]) == (3, 0)
    for part in ("train", "eval", "logging", "startup", "total"):
        assert job.data.metrics[time_key(part)] >= 0
    assert [k for k in job.data.metrics if "/" not in k] == [TEST_ACC_MEAN]  # the sort key
    assert job.data.metrics[TEST_ACC_MEAN] == job.data.metrics[MEAN["test_acc"]]
    # a dirty tree (as while developing) also keeps its diff: experiments/provenance.py
    dirty = ["provenance/git.diff"] if job.data.tags["mtl.git_dirty"] == "true" else []
    assert _artifacts(client, job.info.run_id) == ["config.yaml", "figures/curves.png",
                                                   *dirty, "replicas.csv"]  # fmt: skip
    assert job.data.tags["mtl.versions"].startswith("torch=")
    table = Path(client.download_artifacts(job.info.run_id, "replicas.csv", str(tmp_path)))
    rows = [line.split(",") for line in table.read_text().splitlines()]
    assert rows[0] == ["seed", *CURVES, "diverged", "diverged_epoch"]
    assert [(int(r[0]), float(r[4]), r[5]) for r in rows[1:]] == [
        (i, f, "false") for i, f in enumerate(finals)
    ]

    for seed, rep in enumerate(replicas):
        assert rep.info.status == "FINISHED"
        tags = rep.data.tags
        assert tags["mlflow.parentRunId"] == tags["mtl.job_run_id"] == job.info.run_id
        assert (tags["mtl.kind"], tags["mtl.seed"], tags["mtl.diverged"]) == (
            "replica",
            str(seed),
            "false",
        )
        assert tags["mtl.config_hash"] == job.data.tags["mtl.config_hash"]
        assert set(rep.data.params) == PARAMS | {"seed"}
        # Where it belongs and who owns it; how it ran and the provenance are its job run's.
        assert {"mtl.format", "mtl.study", "mtl.bundle", "mtl.bundle_id", "mtl.host", "mtl.pid",
                "mtl.pid_start", "mtl.boot_id", "mlflow.runName"} <= set(tags)  # fmt: skip
        assert not [k for k in tags if k.startswith("mtl.cfg.")]
        assert not {"mtl.command", "mtl.versions", "mtl.cpu", "mtl.git_commit"} & set(tags)
        assert rep.data.params["model.activations"] == "[tanh,tanh,tanh]"
        assert sorted(rep.data.metrics) == REPLICA_METRICS
        assert _artifacts(client, rep.info.run_id) == ARTIFACTS
        histories = {k: client.get_metric_history(rep.info.run_id, CURVE_METRIC[k]) for k in CURVES}
        for key, history in histories.items():
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 5, 10, 15, 20]
            assert rep.data.metrics[FINAL[key]] == rep.data.metrics[CURVE_METRIC[key]]
        # curves.csv holds the same numbers at full precision
        path = client.download_artifacts(rep.info.run_id, "curves.csv", str(tmp_path))
        table = np.loadtxt(path, delimiter=",", skiprows=1)
        assert Path(path).read_text().splitlines()[0] == "epoch," + ",".join(CURVES)
        for col, key in enumerate(CURVES, start=1):
            by_step = {m.step: m.value for m in histories[key]}
            assert [by_step[int(e)] for e in table[:, 0]] == pytest.approx(table[:, col], rel=1e-12)
        config = yaml.safe_load(
            Path(
                client.download_artifacts(rep.info.run_id, "config.yaml", str(tmp_path))
            ).read_text()
        )
        assert (config["seed"], config["replicas"]) == (seed, 1)
        weights = torch.load(
            client.download_artifacts(rep.info.run_id, "weights.pt", str(tmp_path))
        )
        assert weights["0.weight"].shape == (25, 2) and len(weights) == 8


def test_seed_alone_equals_its_replica_in_a_batch(tmp_path):
    off = ("tracking.replica_figures=false", "tracking.replica_weights=false")
    _, client = _in_process(tmp_path, "seed=7", "replicas=1", "tracking.experiment=alone", *off)
    _in_process(tmp_path, "seed=0", "replicas=110", "tracking.experiment=batch", *off)
    (alone,) = runs_by_kind(client, "alone")["replica"]
    batch = runs_by_kind(client, "batch")["replica"]
    assert len(batch) == 110
    (seventh,) = [r for r in batch if r.data.tags["mtl.seed"] == "7"]
    for key in REPLICA_METRICS:
        assert seventh.data.metrics[key] == pytest.approx(alone.data.metrics[key], abs=1e-5), key


def test_one_diverging_replica_leaves_the_others_intact(tmp_path, monkeypatch):
    real = training.train_replicas
    _in_process(tmp_path, "tracking.experiment=normal")

    def huge_lr_on_replica_1(seeds, spec, **kw):
        return real(seeds, dataclasses.replace(spec, lr=(spec.lr, 1e6, spec.lr)), **kw)

    monkeypatch.setattr(training, "train_replicas", huge_lr_on_replica_1)
    score, client = _in_process(tmp_path, "tracking.experiment=diverging")
    normal = {r.data.tags["mtl.seed"]: r for r in runs_by_kind(client, "normal")["replica"]}
    kinds = runs_by_kind(client, "diverging")
    bad = {r.data.tags["mtl.seed"]: r for r in kinds["replica"]}
    assert bad["1"].data.tags["mtl.diverged"] == "true"
    assert bad["1"].data.metrics[DIVERGED_METRIC] == 1
    assert bad["1"].data.metrics[DIVERGED_EPOCH] > 0
    assert math.isnan(bad["1"].data.metrics[FINAL["test_acc"]])
    for seed in ("0", "2"):
        assert bad[seed].data.tags["mtl.diverged"] == "false"
        for key in REPLICA_METRICS:
            assert bad[seed].data.metrics[key] == normal[seed].data.metrics[key], key
    (job,) = kinds["job"]
    assert job.info.status == "FINISHED" and job.data.metrics[STATS["n_diverged"]] == 1
    mean = np.mean([bad[s].data.metrics[FINAL["test_acc"]] for s in ("0", "2")])
    assert job.data.metrics[TEST_ACC_MEAN] == pytest.approx(mean) == score


def _statuses(client: MlflowClient, experiment: str = "quick") -> dict[str, list[str]]:
    return {
        k: sorted(r.info.status for r in v) for k, v in runs_by_kind(client, experiment).items()
    }


def test_training_error_ends_the_job_failed_with_the_error(tmp_path, monkeypatch):
    def boom(seeds, **kw):
        raise RuntimeError("injected failure in training")

    monkeypatch.setattr(training, "train_replicas", boom)
    with pytest.raises(RuntimeError):
        _in_process(tmp_path)
    client = MlflowClient(sqlite_uri(tmp_path))
    assert _statuses(client) == {"job": ["FAILED"]}
    (job,) = runs_by_kind(client, "quick")["job"]
    assert job.data.tags["mtl.error"] == "RuntimeError: injected failure in training"


def test_logging_error_ends_every_open_run_failed(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("injected failure while drawing")

    monkeypatch.setattr(plots.ReplicaFigures, "save", broken)  # in the forked writer
    with pytest.raises(OSError):
        _in_process(tmp_path)
    client = MlflowClient(sqlite_uri(tmp_path))
    assert _statuses(client) == {"job": ["FAILED"], "replica": ["FAILED"] * 3}


def test_keyboard_interrupt_ends_the_job_killed(tmp_path, monkeypatch):
    def interrupted(seeds, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_replicas", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _in_process(tmp_path)
    assert _statuses(MlflowClient(sqlite_uri(tmp_path))) == {"job": ["KILLED"]}


def _metrics(n_steps: int) -> list[Metric]:
    ts = int(time.time() * 1000)
    values = [0.5, float("nan"), float("inf"), -float("inf"), 1e-300]
    out = [
        Metric("curve", values[i % len(values)] + (i if i % 5 == 0 else 0), ts, 10 * i)
        for i in range(n_steps)
    ]
    return out + [Metric("final", 0.25, ts, 10 * n_steps)]


def test_bulk_insert_stores_what_log_batch_stores(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path), "bulk")
    fast, slow = tracker.start_run("fast", {}), tracker.start_run("slow", {})
    params = {"a": "1", "b": "x,y"}
    values = _metrics(1200)
    assert tracker.bulk_log({fast: (values, params)})  # the sqlite bulk path ran
    assert tracker.bulk_log({fast: (values, params)})  # again (a sync): nothing stored twice
    tracker.log_batch(slow, _metrics(1200), params)  # MLflow's own path, in chunks of 1000
    client = tracker.client

    def seen(run_id):
        run = client.get_run(run_id)
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "curve"))
        return run.data.params, run.data.metrics, history

    a, b = seen(fast), seen(slow)
    assert a[0] == b[0] == params
    assert a[1].keys() == b[1].keys() and a[1]["final"] == b[1]["final"] == 0.25
    assert np.allclose([v for _, v in a[2]], [v for _, v in b[2]], equal_nan=True)
    assert [s for s, _ in a[2]] == [s for s, _ in b[2]] == [10 * i for i in range(1200)]
    latest_a, latest_b = a[1]["curve"], b[1]["curve"]
    assert latest_a == latest_b or (math.isnan(latest_a) and math.isnan(latest_b))


def test_bulk_created_and_ended_runs_equal_mlflows_own(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path), "bulk")
    parent = tracker.start_run("job", {"k": "v"})
    tags = {"mtl.kind": "replica", "mtl.seed": "3"}
    own = tracker.start_run("seed 3", tags, parent_run_id=parent, start_time=1234)
    fast = tracker.start_runs([("seed 3", tags), ("seed 4", tags)], parent, start_time=1234)
    assert len(fast) == 2 and set(fast) <= set(tracker.open_runs)
    tracker.end_run(own, "FINISHED")
    tracker.end_runs(fast, "FINISHED")
    assert tracker.open_runs == [parent]
    client = tracker.client
    a, b = client.get_run(own), client.get_run(fast[0])
    fields = ["experiment_id", "run_name", "user_id", "status", "start_time", "lifecycle_stage"]
    assert [getattr(a.info, f) for f in fields] == [getattr(b.info, f) for f in fields]
    assert a.info.status == "FINISHED" and b.info.end_time >= a.info.end_time >= 1234
    assert a.data.tags == b.data.tags and a.data.tags["mlflow.parentRunId"] == parent
    assert a.data.tags["mlflow.runName"] == "seed 3"
    assert b.info.artifact_uri == a.info.artifact_uri.replace(own, fast[0])
    assert tracker.artifact_uris[fast[0]] == b.info.artifact_uri
    # The children are found as MLflow finds them.
    found = client.search_runs([a.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_id for r in found} == {own, *fast}


def test_retry_waits_out_a_locked_database():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        retry(lambda: (_ for _ in ()).throw(ValueError("not transient")))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise(caplog):
    tty = _Tty()
    bar = Progress(100, "job", enabled=True, stream=tty)
    for epoch in range(10, 101, 10):
        bar(epoch)
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 10 and "100/100 epochs 100%" in text and text.endswith("\n")

    plain = io.StringIO()
    caplog.set_level("INFO", logger="experiments.train")
    lines = Progress(400, "job", enabled=True, stream=plain)
    for epoch in range(10, 401, 10):
        lines(epoch)
    assert plain.getvalue() == ""
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "job: epoch 100/400 (25%)",
        "job: epoch 200/400 (50%)",
        "job: epoch 300/400 (75%)",
        "job: epoch 400/400 (100%)",
    ]


def test_tracking_uri_precedence_and_artifact_location(monkeypatch, tmp_path):
    from experiments.provenance import repo_root
    from experiments.tracking import artifact_location, resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_uri(None)
    assert default == f"sqlite:///{repo_root()}/runs/mlflow.db"
    assert (
        artifact_location(default, "report") == (repo_root() / "runs/mlartifacts/report").as_uri()
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(None) == "http://127.0.0.1:5000"
    assert resolve_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert artifact_location("http://127.0.0.1:5000", "report") is None
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"


def test_live_progress_sends_the_mean_curves_while_training_and_nothing_twice(tmp_path):
    """The job run's mean curves grow while it trains (sent from a thread); the upload adds
    only the steps not sent, with the same values, so each epoch appears once."""
    _, client = _in_process(
        tmp_path, "trainer.epochs=600", "trainer.eval_every=5", "trainer.workers=2",
        "tracking.live_every_s=0.02", "tracking.replica_figures=false",
        "tracking.history_points=0",  # the replicas' every point, to check the means against
    )  # fmt: skip
    kinds = runs_by_kind(client, "quick")
    (job,) = kinds["job"]
    logged_ms = json.loads(Path(job.data.tags["mtl.bundle"], "bundle.json").read_text())[
        "logged_ms"
    ]
    replicas = kinds["replica"]
    for key in CURVES:
        history = client.get_metric_history(job.info.run_id, MEAN[key])
        steps = sorted(m.step for m in history)
        assert steps == list(range(0, 601, 5)), key  # every point, none twice
        live = [m for m in history if m.timestamp < logged_ms]
        assert live, f"{key}_mean: no point was sent while the job trained"
        per_seed = [
            {m.step: m.value for m in client.get_metric_history(r.info.run_id, CURVE_METRIC[key])}
            for r in replicas
        ]
        # accuracies: the exact fraction of all points, k / (3 n)
        n = int(job.data.params[f"data.n_{key[:-4]}"]) if key.endswith("acc") else None
        for m in history:
            values = [h[m.step] for h in per_seed]
            want = round(sum(values) * n) / (3 * n) if n else np.mean(values)
            assert m.value == pytest.approx(want, rel=1e-12, abs=1e-15), (key, m.step)


def test_a_job_process_freezes_the_loaded_libraries_once(tmp_path):
    """After the first job's imports the garbage collector no longer walks the libraries'
    objects (a full collection ~250 ms -> a few ms; joblib's workers force one after every
    job); later jobs of the same process add nothing to it. In a fresh process."""
    import subprocess
    import sys

    from tests.experiments.conftest import CONF

    code = f"""
import gc, json
from pathlib import Path
from experiments.job import JobContext, run
from tests.experiments.conftest import compose_cfg, sqlite_uri
tmp = Path({str(tmp_path)!r})
counts = [gc.get_freeze_count()]
for seed in (0, 10):
    cfg = compose_cfg("experiment=quick", f"tracking.uri={{sqlite_uri(tmp)}}",
                      "trainer.progress=false", f"seed={{seed}}")
    run(cfg, JobContext(study="quick", output_dir=str(tmp / f"job{{seed}}")))
    counts.append(gc.get_freeze_count())
print(json.dumps(counts))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=CONF.parent, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    before, first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    # refcounting still frees frozen objects, so the count may shrink; freezing again would
    # add the second job's objects to it
    assert before == 0 and first > 100_000 and second <= first
