"""The app from the command line: bad values exit 2 with one message, before any run or data;
a good run exits 0 and records the kernel that trained."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.experiments.conftest import QUICK_FAST, run_app, runs_by_kind, sqlite_uri

# (override, text the message must contain)
CASES = {
    "lr": ("optim.lr=0", "optim.lr=0.0 is not accepted"),
    "batch_size_zero": ("trainer.batch_size=0", "trainer.batch_size=0 is not accepted"),
    "batch_size_big": ("trainer.batch_size=5000", "from 1 to data.n_train=200"),
    "epochs": ("trainer.epochs=0", "trainer.epochs=0 is not accepted"),
    "eval_every": ("trainer.eval_every=0", "trainer.eval_every=0 is not accepted"),
    "replicas": ("replicas=-1", "replicas=-1 is not accepted"),
    "activation": ("model.act1=swish", "model.act1='swish' is not accepted"),
    "init": ("model.init=he", "model.init='he' is not accepted"),
    "activations_length": ("model.hidden=[25,25]", "has 3 entries but model.hidden=[25, 25]"),
    "unknown_key": ("foo=1", "Key 'foo' not in 'Config'"),
    "unknown_key_plus": ("+foo=1", "foo is not a key of this app's config"),
    "kernel": ("trainer.kernel=numpy", "trainer.kernel='numpy' is not accepted: one of auto, "),
    "wrong_type": ("optim.lr=fast", "optim.lr"),
    "multirun_job": ("-m optim.lr=0.01,-1", "In the multirun job with overrides"),
    # a later job's value of the wrong type (set on a copy of the first job's config)
    "multirun_type": (
        "-m optim.lr=0.01,fast",
        "`optim.lr=fast` cannot be applied: Value 'fast' of type 'str' could not "
        "be converted to Float (key optim.lr)",
    ),
    "multirun_type_first": ("-m trainer.batch_size=x,10", "trainer.batch_size=x"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run at once (each is a few seconds of imports), keyed like CASES."""
    base = tmp_path_factory.mktemp("cli")

    def one(item):
        name, (override, _) = item
        tmp = base / name
        tmp.mkdir()
        args = [*override.split(), "experiment=quick", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
        return name, tmp, run_app(tmp, *args, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {name: (tmp, proc) for name, tmp, proc in pool.map(one, CASES.items())}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_exits_2_with_one_message(outcomes, name):
    tmp, proc = outcomes[name]
    expected = CASES[name][1]
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    # Nothing was trained or logged: no store, no run.
    assert not (Path(tmp) / "mlflow.db").exists()


def test_unreachable_server_is_a_clear_error_before_training(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    proc = run_app(
        tmp_path, "experiment=quick", f"tracking.uri={uri}", "tracking.server_timeout_s=2"
    )
    assert proc.returncode == 2
    assert f"tracking.uri='{uri}': the MLflow server does not answer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "training 3 replicas" not in proc.stdout


def test_file_store_is_refused(tmp_path):
    proc = run_app(tmp_path, "experiment=quick", f"tracking.uri={tmp_path}/mlruns")
    assert proc.returncode == 2
    assert "is a file store" in proc.stderr and "sqlite:///" in proc.stderr


def test_a_job_records_its_kernel_and_exits_normally(tmp_path):
    uri = sqlite_uri(tmp_path)
    ck = f"trainer.checkpoint_dir={tmp_path}/ck"
    proc = run_app(tmp_path, "experiment=quick", f"tracking.uri={uri}", "trainer.kernel=torch", ck,
                   *QUICK_FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (job,) = runs_by_kind(MlflowClient(uri), "quick")["job"]
    # torch's kernels asked for: the tag says they ran (native where "auto" could build it).
    assert job.data.tags["mtl.kernel"] == "torch"
    assert job.data.tags["mtl.cfg.trainer.kernel"] == "torch"
    assert "trainer.kernel" not in job.data.params  # how it ran, not what it computes
    # Counted from the start of the task (config check, imports, store) to training.
    assert 0 < job.data.metrics["time/startup_s"] < job.data.metrics["time/total_s"]
    (bundle,) = (tmp_path / "hydra" / "run").glob("bundle*/job.json")
    assert '"kernel": "torch"' in bundle.read_text()


def test_the_task_function_is_importable_so_launchers_pickle_it_by_reference():
    import pickle

    from experiments import job, train

    # Hydra hands launchers the function it wraps: experiments.job.run, not a __main__ copy.
    assert train.hydra_app.__wrapped__ is job.run
    assert job.run.__module__ == "experiments.job"
    assert pickle.loads(pickle.dumps(job.run)) is job.run
