"""A real MLflow tracking server: a small multirun logs to it over HTTP."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.experiments.conftest import run_app, runs_by_kind
from tests.experiments.procs import MlflowServer
from tests.experiments.test_sweeps import FAST, check_sweep


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on 127.0.0.1 with its own sqlite store; stopped by its process group."""
    srv = MlflowServer(tmp_path)
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.mark.server
def test_multirun_against_a_tracking_server(tmp_path, server):
    proc = run_app(
        tmp_path,
        "-m",
        *FAST,
        "optim.lr=0.01,0.02",
        "replicas=2",
        f"tracking.uri={server}",
        "tracking.replica_figures=true",
    )
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(server)
    check_sweep(client, "quick", {lr: {"optim.lr": lr} for lr in ("0.01", "0.02")}, replicas=2)
    replica = runs_by_kind(client, "quick")["replica"][0]
    parent = client.get_run(replica.data.tags["mtl.job_run_id"])
    assert parent.data.tags["mtl.cfg.tracking.uri"] == server  # how it ran: on the job run
    assert replica.data.metrics["final/test_acc"] == replica.data.metrics["curves/test_acc"]
    names = {a.path for a in client.list_artifacts(replica.info.run_id)}
    assert names == {"config.yaml", "curves.csv", "weights.pt", "figures"}
    job = runs_by_kind(client, "quick")["job"][0]
    assert job.data.tags["mtl.bulk_insert"] == "False"  # over HTTP: MLflow's log_batch
