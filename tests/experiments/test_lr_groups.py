"""hydra/launcher=lr_groups: the jobs that differ only in optim.lr train as one batch and are
recorded as if each had trained alone (experiments/lr_groups.py). Real Hydra multiruns into a
real sqlite store, compared with hydra/launcher=joblib; a SIGTERM mid-group, then resumed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments import lr_groups
from experiments.spec import TrainSpec
from experiments.training import (
    TRAINED_FILE,
    clear_checkpoints,
    fingerprint,
    load_trained,
    save_trained,
    train_replicas,
)
from tests.experiments.conftest import run_app, runs_by_kind, sqlite_uri
from tests.experiments.procs import App, session_pids

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "diverged", "diverged_epoch")


def test_jobs_are_grouped_by_all_their_overrides_but_the_learning_rate():
    jobs = [
        ["trainer.batch_size=10", "optim.lr=0.01", "model.activations=[tanh,tanh,tanh]"],
        ["trainer.batch_size=10", "optim.lr=0.01", "model.activations=[relu,relu,relu]"],
        ["trainer.batch_size=10", "optim.lr=0.1", "model.activations=[tanh,tanh,tanh]"],
        ["trainer.batch_size=10", "optim.lr=0.1", "model.activations=[relu,relu,relu]"],
        ["trainer.batch_size=25", "optim.lr=0.01", "model.activations=[tanh,tanh,tanh]"],
        ["trainer.batch_size=25", "+optim.lr=0.1", "model.activations=[tanh,tanh,tanh]"],
    ]
    assert lr_groups.group_jobs(jobs) == [[0, 2], [1, 3], [4, 5]]
    assert lr_groups.group_jobs([["seed=1"], ["seed=2"]]) == [[0], [1]]
    assert lr_groups.group_jobs([]) == []


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_a_batch_of_several_rates_equals_each_rate_trained_alone(kernel):
    kw = dict(epochs=40, eval_every=10, n_train=200, n_test=100, batch_size=25, kernel=kernel)
    rates = (0.01, 0.3)  # 0.3 with MSE and tanh: a fast, nearly diverging rate
    # The native kernel's replicas never mix: bit for bit. torch's batched matmuls may
    # block differently for another replica count: to float tolerance (DESIGN).
    if kernel == "native":
        same = torch.equal
    else:
        same = lambda a, b: torch.allclose(a.double(), b.double(), rtol=0, atol=1e-5)  # noqa: E731
    together = train_replicas([0, 1, 2] * 2, TrainSpec(lr=(rates[0],) * 3 + (rates[1],) * 3, **kw))
    for i, lr in enumerate(rates):
        alone = train_replicas([0, 1, 2], TrainSpec(lr=lr, **kw))
        part = together.take(3 * i, 3)
        assert part.seeds == [0, 1, 2]
        for name in METRICS:
            assert same(getattr(part, name), getattr(alone, name)), (lr, name)
        for key, value in alone.state.items():
            assert same(part.state[key], value), (lr, key)
    assert not torch.equal(together.state["0.weight"][0], together.state["0.weight"][3])


def test_trained_results_round_trip_only_under_their_own_settings(tmp_path):
    spec = TrainSpec(epochs=20, eval_every=10, n_train=100, n_test=50, lr=0.05)
    result = train_replicas([3, 4], spec)
    result.trained_with = "jobs #0, #1"
    result.timings = {"train": 2.0}
    save_trained(tmp_path / "job", result.take(1, 1), fingerprint([4], spec))
    back = load_trained(tmp_path / "job", fingerprint([4], spec))
    assert back is not None and back.seeds == [4] and back.trained_with == "jobs #0, #1"
    assert back.timings == {"train": 1.0}  # its share of the batch's time
    for name in METRICS:
        assert torch.equal(getattr(back, name), getattr(result, name)[1:]), name
    other = TrainSpec(epochs=20, eval_every=10, n_train=100, n_test=50, lr=0.1)
    assert load_trained(tmp_path / "job", fingerprint([4], other)) is None
    assert load_trained(tmp_path / "job", fingerprint([5], spec)) is None
    assert load_trained(tmp_path / "nothing", fingerprint([4], spec)) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / TRAINED_FILE).write_bytes(b"not a torch file")
    assert load_trained(tmp_path / "bad", fingerprint([4], spec)) is None
    assert clear_checkpoints(tmp_path / "job") == 1
    assert not (tmp_path / "job").exists()


# 2 batch sizes x 2 learning rates: 2 groups of 2 jobs, one per joblib worker.
SWEEP = ("-m", "experiment=quick", "optim.lr=0.01,0.1", "trainer.batch_size=10,25",
         "trainer.epochs=3000", "trainer.eval_every=500", "trainer.checkpoint_every=250",
         "tracking.replica_figures=false")  # fmt: skip


def _sweep(tmp_path: Path, launcher: str) -> tuple[str, ...]:
    return (*SWEEP, f"hydra/launcher={launcher}", f"tracking.uri={sqlite_uri(tmp_path)}",
            f"trainer.checkpoint_dir={tmp_path}/ckpt")  # fmt: skip


def _replicas(tmp_path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(config hash, seed) -> the non-time metrics of the FINISHED replica runs."""
    client = MlflowClient(sqlite_uri(tmp_path))
    return {
        (r.data.tags["mtl.config_hash"], r.data.tags["mtl.seed"]): {
            k: v for k, v in r.data.metrics.items() if not k.startswith("time/")
        }
        for r in runs_by_kind(client, "quick")["replica"]
        if r.info.status == "FINISHED"
    }


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict:
    """The sweep with hydra/launcher=joblib: each job trained alone."""
    tmp = tmp_path_factory.mktemp("alone")
    proc = run_app(tmp, *_sweep(tmp, "joblib"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = _replicas(tmp)
    assert len(replicas) == 12
    return replicas


@pytest.mark.slow
def test_a_grouped_sweep_records_what_each_job_alone_would(tmp_path, alone):
    proc = run_app(tmp_path, *_sweep(tmp_path, "lr_groups"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 jobs in 2 groups" in proc.stdout + proc.stderr
    assert _replicas(tmp_path) == alone  # every metric, bit for bit
    kinds = runs_by_kind(MlflowClient(sqlite_uri(tmp_path)), "quick")
    assert [s.info.status for s in kinds["sweep"]] == ["FINISHED"]
    jobs = {j.data.tags["mtl.job_num"]: j for j in kinds["job"]}
    assert {j.info.status for j in jobs.values()} == {"FINISHED"}
    assert sorted(jobs) == ["0", "1", "2", "3"]
    for job in jobs.values():  # jobs 0 and 2 (batch 10), 1 and 3 (batch 25) trained together
        num = int(job.data.tags["mtl.job_num"])
        lead = jobs[str(num % 2)].info.run_id
        assert job.data.tags["mtl.trained_with"] == (
            f"jobs #{num % 2}, #{num % 2 + 2} in one batch of 6 replicas, by job run {lead}"
        )
    assert list((tmp_path / "ckpt").rglob("*.pt")) == []  # trained results and checkpoints


@pytest.mark.slow
def test_a_sigterm_mid_group_ends_its_runs_killed_and_the_rerun_resumes_the_group(tmp_path, alone):
    args = _sweep(tmp_path, "lr_groups")
    group_checkpoints = lambda: list((tmp_path / "ckpt").rglob("shard-0-6.pt"))  # noqa: E731
    app = App(tmp_path, *args)
    try:
        app.wait_until(lambda: len(group_checkpoints()) >= 1)  # a group of 6 replicas saved
        app.proc.send_signal(signal.SIGTERM)
        assert app.finish(timeout=30) == 143
        deadline = time.monotonic() + 10
        while session_pids(app.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_pids(app.proc.pid) == []  # no orphaned joblib worker
    finally:
        app.kill_all()
    client = MlflowClient(sqlite_uri(tmp_path))
    kinds = runs_by_kind(client, "quick")
    assert "RUNNING" not in {r.info.status for runs in kinds.values() for r in runs}
    assert "KILLED" in {j.info.status for j in kinds["job"]}

    proc = run_app(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from epoch" in proc.stdout + proc.stderr
    assert _replicas(tmp_path) == alone
    finished = [j for j in runs_by_kind(client, "quick")["job"] if j.info.status == "FINISHED"]
    assert sorted(j.data.tags["mtl.job_num"] for j in finished) == ["0", "1", "2", "3"]
    assert list((tmp_path / "ckpt").rglob("*.pt")) == []


@pytest.mark.slow
def test_a_partner_whose_results_cannot_be_kept_trains_itself(tmp_path, alone):
    """The fault: job 2's checkpoint folder cannot be made (a file is in its place), so its
    group's leader, job 0, cannot leave it its results. Job 2 then trains alone; nothing is
    lost and the numbers are the same."""
    from experiments.config import config_hash
    from tests.experiments.conftest import compose_cfg

    args = _sweep(tmp_path, "lr_groups")
    swept = ("-m", "optim.lr=0.01,0.1", "trainer.batch_size=10,25")
    fixed = [a for a in args if a not in swept and not a.startswith("hydra/")]
    job2 = compose_cfg(*fixed, "optim.lr=0.1", "trainer.batch_size=10")
    folder = tmp_path / "ckpt" / "quick" / f"{config_hash(job2)}-seed0-n3"
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    proc = run_app(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "job #2: cannot keep its trained results" in proc.stdout + proc.stderr
    assert _replicas(tmp_path) == alone
    jobs = {
        j.data.tags["mtl.job_num"]: j
        for j in runs_by_kind(MlflowClient(sqlite_uri(tmp_path)), "quick")["job"]
    }
    assert {j.info.status for j in jobs.values()} == {"FINISHED"}
    assert "mtl.trained_with" in jobs["0"].data.tags
    assert "mtl.trained_with" not in jobs["2"].data.tags  # trained alone
