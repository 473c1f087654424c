"""A real MLflow tracking server: a small multirun logs to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.experiments.conftest import run_app, runs_by_kind
from tests.experiments.test_sweeps import FAST, check_sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on 127.0.0.1 with its own sqlite store; stopped by its process group."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115  (closed in finally)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/srv.db",
            "--default-artifact-root",
            str(tmp_path / "art"),
            "--workers",
            "1",
        ],
        # Job execution off: the default server stalls on keep-alive requests.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.3)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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
    assert replica.data.params["tracking.uri"] == server
    assert replica.data.metrics["final_test_acc"] == replica.data.metrics["test_acc"]
    names = {a.path for a in client.list_artifacts(replica.info.run_id)}
    assert names == {"config.yaml", "curves.csv", "weights.pt", "figures"}
    job = runs_by_kind(client, "quick")["job"][0]
    assert job.data.tags["mtl.bulk_insert"] == "False"  # over HTTP: MLflow's log_batch
