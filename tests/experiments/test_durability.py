"""Nothing lost: faults injected into real processes (signals, kill -9, a server killed, a full
disk, concurrent starts), then the results checked in a real store, resumed and synced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from experiments.bundle import Bundle, find_bundles
from tests.experiments.conftest import REPO, run_app, runs_by_kind, sqlite_uri
from tests.experiments.procs import App, MlflowServer, session_pids

# 20 replicas over 2 workers, long enough to be stopped mid-training (~5 s of training here),
# with a checkpoint every 100 epochs.
LONG = (
    "experiment=quick",
    "replicas=20",
    "data.n_train=500",
    "data.n_test=200",
    "trainer.epochs=2000",
    "trainer.eval_every=100",
    "trainer.workers=2",
    "trainer.checkpoint_every=100",
    "tracking.replica_figures=false",
)
CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")


def _args(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    return (*LONG, f"tracking.uri={sqlite_uri(tmp_path)}",
            f"trainer.checkpoint_dir={tmp_path}/ckpt", *extra)  # fmt: skip


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ckpt").rglob("shard-*.pt"))


def _sync(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.sync", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def _finals(client: MlflowClient, experiment: str) -> dict[int, dict[str, float]]:
    """seed -> final metrics of the FINISHED replica runs."""
    reps = runs_by_kind(client, experiment).get("replica", [])
    return {
        int(r.data.tags["mtl.seed"]): {k: r.data.metrics[f"final/{k}"] for k in CURVES}
        for r in reps
        if r.info.status == "FINISHED"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict[str, float]]:
    """The LONG job trained without interruption: the numbers a resumed job must match."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_app(tmp, *_args(tmp, "trainer.checkpoint_every=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    finals = _finals(MlflowClient(sqlite_uri(tmp)), "quick")
    assert sorted(finals) == list(range(20))
    return finals


def _assert_equal_to(reference: dict, finals: dict) -> None:
    assert sorted(finals) == sorted(reference)
    for seed, values in reference.items():
        for key, value in values.items():
            assert finals[seed][key] == pytest.approx(value, abs=1e-6), (seed, key)


@pytest.mark.slow
def test_sigterm_ends_runs_killed_stops_workers_and_the_rerun_resumes(tmp_path, reference):
    app = App(tmp_path, *_args(tmp_path))
    try:
        app.wait_until(lambda: len(_checkpoints(tmp_path)) == 2)  # both shards saved once
        assert len(session_pids(app.proc.pid)) >= 2  # the parent and its worker
        t0 = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        assert app.finish(timeout=30) == 143
        assert time.monotonic() - t0 < 10
        assert session_pids(app.proc.pid) == []  # no orphaned worker
    finally:
        app.kill_all()
    assert "Stopped by SIGTERM" in app.output and "resume" in app.output
    client = MlflowClient(sqlite_uri(tmp_path))
    (job,) = runs_by_kind(client, "quick")["job"]
    assert job.info.status == "KILLED"
    assert job.data.tags["mtl.error"] == "stopped by SIGTERM (signal 15)"
    (bundle,) = find_bundles([tmp_path / "hydra"])
    assert Bundle.open(bundle).state == "training"

    # The same command again: resumes from the checkpoints and ends as if never stopped.
    proc = run_app(tmp_path, *_args(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resum" in proc.stdout.lower()
    _assert_equal_to(reference, _finals(client, "quick"))
    jobs = {j.info.status for j in runs_by_kind(client, "quick")["job"]}
    assert jobs == {"KILLED", "FINISHED"}
    assert _checkpoints(tmp_path) == []  # removed once the job's results were safe


@pytest.mark.slow
def test_kill_9_leaves_no_orphan_and_the_next_job_reaps_and_resumes(tmp_path, reference):
    app = App(tmp_path, *_args(tmp_path))
    try:
        app.wait_until(lambda: len(_checkpoints(tmp_path)) == 2)
        app.proc.kill()
        app.finish(timeout=10)
        deadline = time.monotonic() + 10
        while session_pids(app.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_pids(app.proc.pid) == []  # the worker died with its parent
    finally:
        app.kill_all()
    client = MlflowClient(sqlite_uri(tmp_path))
    (job,) = runs_by_kind(client, "quick")["job"]
    assert job.info.status == "RUNNING"  # nobody could end it...
    proc = run_app(tmp_path, *_args(tmp_path))  # ...until the next job looks
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = client.get_run(job.info.run_id)
    assert old.info.status == "KILLED"
    assert "no longer exists" in old.data.tags["mtl.error"]
    _assert_equal_to(reference, _finals(client, "quick"))


@pytest.mark.slow
def test_a_finished_job_is_not_trained_again_unless_rerun(tmp_path):
    args = ("experiment=quick", f"tracking.uri={sqlite_uri(tmp_path)}")
    first = run_app(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_app(tmp_path, *args)
    assert again.returncode == 0 and "already done: job run" in again.stdout
    client = MlflowClient(sqlite_uri(tmp_path))
    assert len(runs_by_kind(client, "quick")["job"]) == 1
    forced = run_app(tmp_path, *args, "tracking.rerun=true")
    assert forced.returncode == 0
    assert len(runs_by_kind(client, "quick")["job"]) == 2


@pytest.mark.slow
@pytest.mark.server
def test_server_killed_during_training_then_restarted_and_synced(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        uri = server.start()
        _train_while_the_server_is_killed(tmp_path, server, uri)
        server.start()
        _sync_fills_the_restarted_server(tmp_path, uri)
    finally:
        server.stop()  # also when the app or the sync failed: no server left behind


def _train_while_the_server_is_killed(tmp_path: Path, server: MlflowServer, uri: str) -> None:
    """The server is killed once the job run exists, before training: the job trains on
    (its live curves, sent every second, fail meanwhile), then gives up logging after
    tracking.retry_s and keeps everything in its bundle."""
    args = (*LONG, "trainer.epochs=1000", f"tracking.uri={uri}", "tracking.retry_s=3",
            "tracking.live_every_s=1", f"trainer.checkpoint_dir={tmp_path}/ckpt")  # fmt: skip
    app = App(tmp_path, *args)
    try:
        app.wait_for("MLflow: ")
        server.stop(signal.SIGKILL)
        t0 = time.monotonic()
        assert app.finish(timeout=120) == 3
        assert time.monotonic() - t0 < 60  # bounded by tracking.retry_s, not MLflow's minutes
    finally:
        app.kill_all()
    (bundle,) = find_bundles([tmp_path / "hydra"])
    assert f"Nothing trained is lost: the results are in the bundle {bundle}" in app.output
    assert "python -m experiments.sync" in app.output and "Traceback" not in app.output
    assert Bundle.open(bundle).state == "trained"


def _sync_fills_the_restarted_server(tmp_path: Path, uri: str) -> None:
    """`python -m experiments.sync` uploads the bundle whole, once however often it runs."""
    first = _sync(str(tmp_path / "hydra"), "--tracking-uri", uri)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("uploaded:"), first.stdout
    client = MlflowClient(uri)
    kinds = runs_by_kind(client, "quick")
    assert [j.info.status for j in kinds["job"]] == ["FINISHED"]
    assert sorted(int(r.data.tags["mtl.seed"]) for r in kinds["replica"]) == list(range(20))
    assert {r.info.status for r in kinds["replica"]} == {"FINISHED"}
    history = client.get_metric_history(kinds["replica"][0].info.run_id, "curves/test_acc")
    assert sorted(m.step for m in history) == list(range(0, 1001, 100))
    second = _sync(str(tmp_path / "hydra"), "--tracking-uri", uri)
    assert second.returncode == 0 and second.stdout.startswith("already there:")
    assert len(runs_by_kind(client, "quick")["replica"]) == 20


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.mark.slow
def test_disk_full_at_logging_keeps_the_bundle_and_sync_completes(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("mounting a tmpfs needs root; the full disk is simulated with one")
    try:
        uri = f"sqlite:///{disk}/mlflow.db"
        from experiments.tracking import open_client

        open_client(uri).search_experiments()  # the schema: ~1 MB of the 64
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * (free - 256 * 1024))  # 256 kB left: runs start, logs fail
        args = (*LONG, "trainer.eval_every=1", "trainer.epochs=400", f"tracking.uri={uri}",
                "trainer.workers=1", f"trainer.checkpoint_dir={tmp_path}/ckpt")  # fmt: skip
        proc = run_app(tmp_path, *args)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "database or disk is full" in proc.stderr and "Traceback" not in proc.stderr
        (bundle,) = find_bundles([tmp_path / "hydra"])
        assert f"the results are in the bundle {bundle}" in proc.stderr
        filler.unlink()
        synced = _sync(str(tmp_path / "hydra"))
        assert synced.returncode == 0 and synced.stdout.startswith("uploaded:"), synced.stdout
        client = MlflowClient(uri)
        kinds = runs_by_kind(client, "quick")
        assert [j.info.status for j in kinds["job"]] == ["FINISHED"]
        assert len(kinds["replica"]) == 20 and {r.info.status for r in kinds["replica"]} == {
            "FINISHED"
        }
        replica = kinds["replica"][3].info.run_id
        steps = sorted(m.step for m in client.get_metric_history(replica, "curves/train_loss"))
        assert steps[0] == 0 and steps[-1] == 400 and len(steps) <= 51  # tracking.history_points
        csv = Path(client.download_artifacts(replica, "curves.csv", str(tmp_path)))
        assert len(csv.read_text().splitlines()) == 1 + 401  # every epoch
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_four_processes_on_a_fresh_sqlite_store(tmp_path):
    uri = sqlite_uri(tmp_path)
    apps = [
        App(
            tmp_path,
            "experiment=quick",
            f"tracking.uri={uri}",
            f"seed={10 * i}",
            "tracking.replica_figures=false",
            f"hydra.run.dir={tmp_path}/run{i}",
            log_name=f"app{i}.log",
        )  # fmt: skip
        for i in range(4)
    ]
    try:
        codes = [a.finish(timeout=240) for a in apps]
    finally:
        for a in apps:
            a.kill_all()
    assert codes == [0, 0, 0, 0], [a.output[-2000:] for a in apps]
    jobs = runs_by_kind(MlflowClient(uri), "quick")["job"]
    assert sorted(j.data.tags["mtl.seeds"] for j in jobs) == ["0..2", "10..12", "20..22", "30..32"]


@pytest.mark.slow
def test_a_sweep_killed_in_its_third_job_continues_under_the_same_sweep_run(tmp_path):
    uri = sqlite_uri(tmp_path)
    # 4000 epochs: about a second of training a job, ten times what the SIGTERM takes to land.
    sweep = ("-m", "experiment=quick", "optim.lr=0.01,0.02,0.03,0.04", f"tracking.uri={uri}",
             "tracking.replica_figures=false", "trainer.epochs=4000", "data.n_train=200",
             "trainer.eval_every=500", f"trainer.checkpoint_dir={tmp_path}/ckpt")  # fmt: skip
    app = App(tmp_path, *sweep)
    try:
        app.wait_for("MLflow: ", count=3)  # the third job has started
        app.proc.send_signal(signal.SIGTERM)
        assert app.finish(timeout=30) == 143
    finally:
        app.kill_all()
    client = MlflowClient(uri)
    kinds = runs_by_kind(client, "quick")
    (sweep_run,) = kinds["sweep"]
    assert sweep_run.info.status == "KILLED"
    assert sorted(j.info.status for j in kinds["job"]) == ["FINISHED", "FINISHED", "KILLED"]

    proc = run_app(tmp_path, *sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already done: job run") == 2  # jobs 0 and 1 were not retrained
    kinds = runs_by_kind(client, "quick")
    assert [s.info.run_id for s in kinds["sweep"]] == [sweep_run.info.run_id]
    resumed = client.get_run(sweep_run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mtl.resumed"] == "1"
    assert resumed.data.metrics["stats/n_jobs"] == resumed.data.metrics["jobs_finished"] == 4
    finished = [j for j in kinds["job"] if j.info.status == "FINISHED"]
    assert sorted(j.data.params["optim.lr"] for j in finished) == ["0.01", "0.02", "0.03", "0.04"]
    assert sorted(j.info.run_name for j in finished) == [f"j{i} lr0.0{i + 1}" for i in range(4)]
    assert resumed.info.run_name == "sweep quick x4: lr"
    seeds_of_j3 = [r.info.run_name for r in kinds["replica"] if r.info.run_name.endswith(" j3")]
    assert sorted(seeds_of_j3) == ["s0 j3", "s1 j3", "s2 j3"]
    assert all(j.data.tags["mtl.sweep_run_id"] == sweep_run.info.run_id for j in kinds["job"])
    planned = json.loads(
        Path(client.download_artifacts(sweep_run.info.run_id, "sweep_jobs.json")).read_text()
    )
    lrs = [[o for o in job["overrides"] if o.startswith("optim.lr=")] for job in planned["jobs"]]
    assert lrs == [[f"optim.lr={lr}"] for lr in ("0.01", "0.02", "0.03", "0.04")]
    assert {job["config_hash"] for job in planned["jobs"]} == {
        j.data.tags["mtl.config_hash"] for j in finished
    }


def _orphaned_job(tmp_path: Path, bundle_state: str):
    """A quick job run in-process, then made what a kill -9 leaves behind: its job run RUNNING,
    owned by a process that no longer exists, its bundle in `bundle_state`."""
    from experiments.reaper import process_tags
    from experiments.tracking import Tracker
    from experiments.train import JobContext, run
    from tests.experiments.conftest import compose_cfg

    uri = sqlite_uri(tmp_path)
    cfg = compose_cfg("experiment=quick", f"tracking.uri={uri}", "trainer.progress=false",
                      f"trainer.checkpoint_dir={tmp_path}/ckpt",
                      "tracking.replica_figures=false")  # fmt: skip
    run(cfg, JobContext(study="quick", output_dir=str(tmp_path / "job")))
    client = MlflowClient(uri)
    (job,) = runs_by_kind(client, "quick")["job"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    Tracker(uri, "quick").log_batch(job.info.run_id, tags=process_tags(dead.pid))
    client.update_run(job.info.run_id, status="RUNNING")
    Bundle.open(tmp_path / "job" / "bundle").update(state=bundle_state)
    return cfg, client, job, dead.pid


def test_a_dead_jobs_trained_bundle_is_completed_by_the_reaper(tmp_path):
    """A job that died while logging (its results in its bundle, its runs RUNNING): the next
    job in the experiment finds its process gone and completes the runs from the bundle."""
    from experiments.train import JobContext, run

    cfg, client, job, _ = _orphaned_job(tmp_path, "trained")
    for r in runs_by_kind(client, "quick")["replica"]:  # as if killed before their metrics
        client.delete_run(r.info.run_id)
    cfg.seed = 50
    run(cfg, JobContext(study="quick", output_dir=str(tmp_path / "next")))
    assert client.get_run(job.info.run_id).info.status == "FINISHED"
    kinds = runs_by_kind(client, "quick")
    mine = [r for r in kinds["replica"] if r.data.tags["mtl.job_run_id"] == job.info.run_id]
    assert [r.info.status for r in mine] == ["FINISHED"] * 3
    finals = [r.data.metrics["final/test_acc"] for r in mine]
    assert client.get_run(job.info.run_id).data.metrics["test_acc_mean"] == pytest.approx(
        np.mean(finals)
    )


def test_sync_refuses_a_path_that_does_not_exist(tmp_path):
    synced = _sync(str(tmp_path / "nothing-here"))
    assert synced.returncode == 2 and "no such file or folder" in synced.stderr


def test_store_faults_are_bounded_and_fatal_ones_not_retried():
    from experiments.errors import StoreUnavailable
    from experiments.tracking import retry, store_fault

    calls = []

    def locked():
        calls.append(time.monotonic())
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="retried for 1 s"):
        retry(locked, retry_s=1.0, uri="sqlite:///x.db")
    assert 1.0 <= time.monotonic() - t0 < 3 and len(calls) >= 3

    def full():
        calls.append(0)
        raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    calls.clear()
    with pytest.raises(StoreUnavailable, match="disk is full"):
        retry(full, retry_s=30)
    assert calls == [0]  # not retried
    assert store_fault(ValueError("Invalid parameter")) is None
    refused = "API request to http://h/api failed with exception Max retries exceeded"
    assert store_fault(RuntimeError(refused)) == "transient"


def test_a_bad_experiment_name_is_one_paragraph_and_exit_2(tmp_path):
    proc = run_app(tmp_path, "experiment=quick", f"tracking.uri={sqlite_uri(tmp_path)}",
                   "tracking.experiment=" + "x" * 600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tracking.experiment=" in proc.stderr and "Traceback" not in proc.stderr
    assert "(length 600)" in proc.stderr


def test_the_analysis_ends_runs_of_dead_processes_killed(tmp_path):
    """A job killed mid-training on this host (no results in its bundle): the analysis finds
    its run RUNNING with its process gone and ends it KILLED before choosing a study."""
    from analysis.__main__ import main as analysis_main

    _, client, job, dead_pid = _orphaned_job(tmp_path, "training")
    uri = sqlite_uri(tmp_path)
    args = ["--tracking-uri", uri, "--experiment", "quick", "--no-mlflow", "-q",
            "--out", str(tmp_path / "reports"), "--n-resamples", "1000"]  # fmt: skip
    assert analysis_main(args) == 2  # no FINISHED study left to analyse
    ended = client.get_run(job.info.run_id)
    assert ended.info.status == "KILLED"
    assert f"process {dead_pid} on" in ended.data.tags["mtl.error"]


def test_a_corrupt_store_is_one_paragraph_before_training(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(os.urandom(100_000))
    proc = run_app(tmp_path, "experiment=quick", f"tracking.uri={sqlite_uri(tmp_path)}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "file is not a database. Nothing was trained." in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert find_bundles([tmp_path / "hydra"]) == []  # nothing started
