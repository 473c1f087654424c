"""Multiruns: one sweep run, its jobs, their replicas, complete with every launcher; Ctrl-C."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from tempfile import mkdtemp

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from experiments.record_format import JOBS_FINISHED, N_JOBS, TEST_ACC_MEAN
from tests.experiments.conftest import REPO, app_args, run_app, runs_by_kind, sqlite_uri

FAST = ("experiment=quick", "tracking.replica_figures=false", "trainer.epochs=10")


def check_sweep(
    client: MlflowClient, experiment: str, jobs: dict[str, dict[str, str]], replicas: int
) -> None:
    """One FINISHED sweep run; under it the expected jobs (name -> params they must have),
    each FINISHED with `replicas` FINISHED replica runs under it; nothing else."""
    kinds = runs_by_kind(client, experiment)
    assert sorted(kinds) == ["job", "replica", "sweep"]
    (sweep,) = kinds["sweep"]
    sweep_id = sweep.info.run_id
    assert sweep.info.status == "FINISHED"
    assert sweep.data.metrics[N_JOBS] == sweep.data.metrics[JOBS_FINISHED] == len(jobs)
    top = max(j.data.metrics[TEST_ACC_MEAN] for j in kinds["job"])
    (best,) = [j for j in kinds["job"] if j.info.run_id == sweep.data.tags["mtl.best_job_run_id"]]
    assert sweep.data.metrics[TEST_ACC_MEAN] == best.data.metrics[TEST_ACC_MEAN] == top
    assert sweep.data.tags["mtl.best_job"] == best.data.tags["mlflow.runName"]
    # the finished count grows as jobs end (each job updates it; parallel jobs may both see 3)
    grown = sorted({m.step for m in client.get_metric_history(sweep_id, JOBS_FINISHED)})
    assert set(grown) <= set(range(1, len(jobs) + 1)) and grown[-1] == len(jobs)
    assert len(grown) > 1 or len(jobs) == 1
    ranking = Path(client.download_artifacts(sweep_id, "jobs.csv", dst_path=mkdtemp()))
    rows = list(csv.DictReader(ranking.open()))
    assert rows[0]["run_id"] == best.info.run_id and len(rows) == len(jobs)
    assert [float(r[TEST_ACC_MEAN]) for r in rows] == sorted(
        (j.data.metrics[TEST_ACC_MEAN] for j in kinds["job"]), reverse=True
    )
    assert "figures" in {a.path for a in client.list_artifacts(sweep_id)}
    assert len(kinds["job"]) == len(jobs)
    seen = set()
    for job in kinds["job"]:
        assert job.info.status == "FINISHED"
        assert job.data.tags["mlflow.parentRunId"] == job.data.tags["mtl.sweep_run_id"] == sweep_id
        assert job.data.tags["mtl.torch_threads"] == "1"
        matching = [
            name
            for name, params in jobs.items()
            if all(job.data.params[k] == v for k, v in params.items())
        ]
        assert len(matching) == 1, job.data.params
        seen.add(matching[0])
        children = [
            r for r in kinds["replica"] if r.data.tags["mlflow.parentRunId"] == job.info.run_id
        ]
        assert sorted(int(r.data.tags["mtl.seed"]) for r in children) == list(range(replicas))
        for r in children:
            assert r.info.status == "FINISHED"
            assert r.data.tags["mtl.sweep_run_id"] == sweep_id
            assert all(r.data.params[k] == job.data.params[k] for k in jobs[matching[0]])
            assert len(client.get_metric_history(r.info.run_id, "curves/test_acc")) == 3
    assert seen == set(jobs)
    assert len(kinds["replica"]) == len(jobs) * replicas


def test_basic_launcher_multirun(tmp_path):
    uri = sqlite_uri(tmp_path)
    proc = run_app(tmp_path, "-m", *FAST, "optim.lr=0.01,0.02", "replicas=2", f"tracking.uri={uri}")
    assert proc.returncode == 0, proc.stderr
    jobs = {lr: {"optim.lr": lr} for lr in ("0.01", "0.02")}
    client = MlflowClient(uri)
    check_sweep(client, "quick", jobs, replicas=2)
    assert (tmp_path / "hydra" / "sweep" / "mlflow_sweep.json").is_file()
    # provenance (experiments/provenance.py): Hydra's composed multirun config, as it saved it
    sweep = client.search_runs(
        [client.get_experiment_by_name("quick").experiment_id], "tags.`mtl.kind` = 'sweep'"
    )[0]
    saved = client.download_artifacts(sweep.info.run_id, "provenance/multirun.yaml", str(tmp_path))
    logged = OmegaConf.load(saved)
    assert logged == OmegaConf.load(tmp_path / "hydra" / "sweep" / "multirun.yaml")
    assert "optim.lr=0.01,0.02" in logged.hydra.overrides.task
    assert sweep.data.tags["mtl.versions"].startswith("torch=")


def test_joblib_launcher_multirun_per_layer_activations(tmp_path):
    # Four jobs in two parallel processes write to one sqlite store.
    uri = sqlite_uri(tmp_path)
    proc = run_app(
        tmp_path,
        "-m",
        *FAST,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model.act1=tanh,relu",
        "model.act3=tanh,sigmoid",
        f"tracking.uri={uri}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = {
        f"{a1},tanh,{a3}": {"model.activations": f"[{a1},tanh,{a3}]"}
        for a1 in ("tanh", "relu")
        for a3 in ("tanh", "sigmoid")
    }
    check_sweep(MlflowClient(uri), "quick", jobs, replicas=3)


def test_submitit_local_launcher_multirun(tmp_path):
    uri = sqlite_uri(tmp_path)
    proc = run_app(
        tmp_path,
        "-m",
        *FAST,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "optim.lr=0.01,0.03",
        "replicas=2",
        f"tracking.uri={uri}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = {lr: {"optim.lr": lr} for lr in ("0.01", "0.03")}
    check_sweep(MlflowClient(uri), "quick", jobs, replicas=2)


def test_explicit_activation_combinations_sweep(tmp_path):
    uri = sqlite_uri(tmp_path)
    proc = run_app(
        tmp_path,
        "-m",
        *FAST,
        "model.activations=[relu,relu,relu],[tanh,relu,sigmoid]",
        "replicas=1",
        f"tracking.uri={uri}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = {a: {"model.activations": f"[{a}]"} for a in ("relu,relu,relu", "tanh,relu,sigmoid")}
    check_sweep(MlflowClient(uri), "quick", jobs, replicas=1)


def test_ctrl_c_ends_the_runs_killed(tmp_path):
    uri = sqlite_uri(tmp_path)
    args = app_args(
        tmp_path,
        "-m",
        "experiment=quick",
        "trainer.epochs=10000000",
        "optim.lr=0.01,0.02",
        f"tracking.uri={uri}",
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")
    }
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("training 3 replicas" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        time.sleep(0.5)  # inside the training loop
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kinds = runs_by_kind(MlflowClient(uri), "quick")
    assert [r.info.status for r in kinds["sweep"]] == ["KILLED"]
    assert [r.info.status for r in kinds["job"]] == ["KILLED"]  # the second job never started
    assert "replica" not in kinds


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_invalid_job_in_a_sweep_is_refused_before_any_run(tmp_path, launcher):
    uri = sqlite_uri(tmp_path)
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_app(tmp_path, "-m", *FAST, *extra, "data.n_test=50,0", f"tracking.uri={uri}")
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert (
        first.startswith("Error: In the multirun job with overrides `")
        and "data.n_test=0 " in first
    )
    assert "data.n_test=0 is not accepted" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


INJECT = """
import sys
import experiments.training as training
from experiments import train
def train_replicas(seeds, spec, **kw):
    if spec.lr > 0.015:
        raise RuntimeError("injected failure")
    return real(seeds, spec, **kw)
real, training.train_replicas = training.train_replicas, train_replicas
sys.argv = ["train", *sys.argv[1:]]
train.main()
"""


def test_failing_job_fails_its_sweep_and_leaves_nothing_running(tmp_path):
    uri = sqlite_uri(tmp_path)
    args = app_args(tmp_path, "-m", *FAST, "optim.lr=0.01,0.02,0.005", f"tracking.uri={uri}")
    env = {
        k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")
    }
    proc = subprocess.run(
        [args[0], "-c", INJECT, *args[3:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    assert "RuntimeError: injected failure" in proc.stderr
    kinds = runs_by_kind(MlflowClient(uri), "quick")
    (sweep,) = kinds["sweep"]
    assert sweep.info.status == "FAILED"
    assert sweep.data.tags["mtl.error"] == "RuntimeError: injected failure"
    by_lr = {j.data.params["optim.lr"]: j for j in kinds["job"]}
    # The basic launcher runs every job, then reports the failure.
    assert {lr: j.info.status for lr, j in by_lr.items()} == {
        "0.01": "FINISHED",
        "0.02": "FAILED",
        "0.005": "FINISHED",
    }
    assert by_lr["0.02"].data.tags["mtl.error"] == "RuntimeError: injected failure"
    assert all(r.info.status == "FINISHED" for r in kinds["replica"]) and len(kinds["replica"]) == 6
    assert sweep.data.metrics[N_JOBS] == 3 and sweep.data.metrics[JOBS_FINISHED] == 2


def test_a_worker_updates_the_sweeps_progress_at_most_every_10_s(monkeypatch):
    """Each summary reads every job run of the sweep: a worker running many short jobs updates
    it at most every PROGRESS_EVERY_S (or 10x the summary's own time), per sweep."""
    from experiments import callbacks

    clock, updates = [1000.0], []

    def summary(tracker, run_id, artifacts=True):
        updates.append(run_id)
        clock[0] += 0.1 if run_id == "fast" else 3.0  # the time the summary itself takes

    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(callbacks, "_log_summary", summary)
    monkeypatch.setattr(callbacks, "_progress_due", {})
    for run_id, pause in [("fast", 0), ("fast", 5), ("slow", 0), ("fast", 4.8), ("fast", 0.5),
                          ("slow", 15), ("slow", 16)]:  # fmt: skip
        clock[0] += pause
        callbacks.sweep_progress(None, run_id)
    # fast: updated at 1000 (due 1010), skipped at 1005.1, updated at 1012.9, skipped at 1013.5;
    # slow: updated at 1005.1 (due 30 s later: 10 x its 3 s), skipped at 1028.5, updated 1044.5
    assert updates == ["fast", "slow", "fast", "slow"]
