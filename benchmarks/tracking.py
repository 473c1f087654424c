"""MLflow logging cost, sqlite store vs a local tracking server, measured side by side.

For each backend: the cost of one replica run as the harness logs it (create, params, tags, the
four curves of 401 points each sent with log_batch, final metrics, end) and the cost per metric
value of log_batch against one log_metric call per value (what we never do in the hot loop).

Run: python benchmarks/tracking.py [--runs 20] [--no-server]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

POINTS = 401  # 4000 epochs, evaluated every 10, plus epoch 0
CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
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
            f"sqlite:///{root}/server.db",
            "--default-artifact-root",
            str(root / "server-artifacts"),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, 15)
    raise RuntimeError(f"mlflow server on {uri} did not answer /health within 60 s")


def replica_run(client: MlflowClient, exp_id: str) -> None:
    run = client.create_run(exp_id, tags={"mtl.kind": "replica"})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(f"group{i}.key{i}", str(i)) for i in range(14)]
    tags = [RunTag("mtl.seed", "0"), RunTag("mtl.git_commit", "0" * 40)]
    metrics = [Metric(c, 0.5, now, 10 * s) for c in CURVES for s in range(POINTS)]
    client.log_batch(rid, params=params, tags=tags)
    for i in range(0, len(metrics), 1000):  # the server accepts at most 1000 metrics a call
        client.log_batch(rid, metrics=metrics[i : i + 1000])
    client.log_batch(rid, metrics=[Metric(f"final_{c}", 0.5, now, 0) for c in CURVES])
    client.set_terminated(rid, "FINISHED")


def harness_bulk(uri: str, runs: int) -> float:
    """ms per replica run of the harness's path on sqlite: the runs created in one transaction
    (Tracker.start_runs), one bulk insert of all metrics and params (bulk_log), one UPDATE
    that ends them (end_runs)."""
    from experiments.tracking import Tracker

    tracker = Tracker(uri, f"bench-bulk-{time.time_ns()}")
    now = int(time.time() * 1000)
    params = {f"group{i}.key{i}": str(i) for i in range(14)}
    t = time.perf_counter()
    ids = tracker.start_runs([(f"r{i}", {"mtl.kind": "replica"}) for i in range(runs)])
    metrics = [Metric(c, 0.5, now, 10 * s) for c in CURVES for s in range(POINTS)]
    metrics += [Metric(f"final_{c}", 0.5, now, 0) for c in CURVES]
    tracker.bulk_log({rid: (metrics, params) for rid in ids})
    tracker.end_runs(ids, "FINISHED")
    return (time.perf_counter() - t) / runs * 1e3


def per_value(client: MlflowClient, exp_id: str, n: int) -> tuple[float, float]:
    rid = client.create_run(exp_id).info.run_id
    now = int(time.time() * 1000)
    t = time.perf_counter()
    for s in range(n):
        client.log_metric(rid, "x", 0.5, now, s)
    one_by_one = (time.perf_counter() - t) / n
    t = time.perf_counter()
    client.log_batch(rid, metrics=[Metric("y", 0.5, now, s) for s in range(n)])
    batched = (time.perf_counter() - t) / n
    client.set_terminated(rid, "FINISHED")
    return one_by_one, batched


def measure(uri: str, runs: int) -> dict[str, float]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_id = client.create_experiment(f"bench-{time.time_ns()}")
    replica_run(client, exp_id)  # warm-up: connections, schema
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        replica_run(client, exp_id)
        times.append(time.perf_counter() - t)
    one, batch = per_value(client, exp_id, 200)
    return {"run_ms": statistics.median(times) * 1e3, "one_us": one * 1e6, "batch_us": batch * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-server", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mtl-bench-"))
    results = {"sqlite": measure(f"sqlite:///{root}/bench.db", args.runs)}
    bulk_ms = harness_bulk(f"sqlite:///{root}/bulk.db", args.runs)
    if not args.no_server:
        proc, uri = start_server(root)
        try:
            results["server"] = measure(uri, args.runs)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
    n_values = len(CURVES) * POINTS + len(CURVES)
    print(f"one replica run = {len(CURVES)} curves x {POINTS} points + finals, params, tags")
    print(
        f"{'backend':<8}{'ms/run':>10}{'110 runs s':>12}{'log_metric us/value':>22}"
        f"{'log_batch us/value':>20}{'ratio':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<8}{r['run_ms']:>10.1f}{r['run_ms'] * 110 / 1e3:>12.2f}"
            f"{r['one_us']:>22.0f}{r['batch_us']:>20.1f}{r['one_us'] / r['batch_us']:>8.0f}x"
        )
    print(f"({n_values} metric values per run)")
    print(
        f"harness on sqlite (runs created in one transaction, one bulk insert of all their "
        f"metrics and params, one UPDATE to end them): {bulk_ms:.1f} ms/run, "
        f"{bulk_ms * 110 / 1e3:.2f} s for 110 runs, "
        f"{results['sqlite']['run_ms'] / bulk_ms:.0f}x less than log_batch"
    )


if __name__ == "__main__":
    main()
