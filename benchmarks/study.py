"""The `report` study through the real entry point, split into its parts, extrapolated.

Runs `python -m experiments.train experiment=report trainer.epochs=E` for two values of E into a
temporary sqlite store, reads the job run's timing metrics (training, evaluation, MLflow
logging, start-up), fits each part as a + b E through the two points, and extrapolates to the
full 4000 epochs. Also reports the peak resident memory of the job (largest process) and the
achieved GFLOP/s of training against the machine's FP32 peak.

Run: python benchmarks/study.py [--epochs 100 300] [--workers 2] [--peak-gflops 330]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("time_startup_s", "time_train_s", "time_eval_s", "time_logging_s")
FULL_EPOCHS, REPLICAS, N_TRAIN, N_TEST, EVAL_EVERY = 4000, 110, 1000, 1000, 10
SIZES = (2, 25, 25, 25, 2)


def training_flop(epochs: int) -> float:
    """Multiply-adds x 2 of forward (1x) and backward (2x: grad wrt weights and inputs)."""
    macs = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=False))
    return 2 * 3 * macs * N_TRAIN * epochs * REPLICAS


def run_study(epochs: int, workers: int, store: Path) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "experiment=report",
        f"trainer.epochs={epochs}",
        f"trainer.workers={workers}",
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"hydra.run.dir={store}/hydra/{epochs}",
    ]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("report")
    job = client.search_runs(
        [exp.experiment_id],
        "tags.`mtl.kind` = 'job'",
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    out = {k: job.data.metrics[k] for k in PARTS}
    out["wall_s"] = wall
    out["test_acc_mean"] = job.data.metrics["test_acc_mean"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs=2, default=[100, 300])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--peak-gflops", type=float, default=330.0, help="FP32 peak, both cores")
    args = ap.parse_args()
    e1, e2 = args.epochs
    with tempfile.TemporaryDirectory(prefix="mtl-study-") as tmp:
        r1 = run_study(e1, args.workers, Path(tmp))
        r2 = run_study(e2, args.workers, Path(tmp))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"report study, {REPLICAS} replicas, workers={args.workers}; measured at {e1} and "
        f"{e2} epochs, extrapolated to {FULL_EPOCHS} as a + b * epochs"
    )
    print(
        f"{'part':<18}{f'{e1} ep (s)':>12}{f'{e2} ep (s)':>12}{f'{FULL_EPOCHS} ep (s)':>14}"
        f"{'share':>8}"
    )
    full = {}
    for k in (*PARTS, "wall_s"):
        slope = (r2[k] - r1[k]) / (e2 - e1)
        full[k] = max(r1[k] + slope * (FULL_EPOCHS - e1), 0.0)
    # Interpreter start and imports before the app's clock starts are in wall but not in parts.
    for k in (*PARTS, "wall_s"):
        share = full[k] / full["wall_s"] if k != "wall_s" else 1.0
        print(
            f"{k.removeprefix('time_').removesuffix('_s'):<18}{r1[k]:>12.2f}{r2[k]:>12.2f}"
            f"{full[k]:>14.1f}{100 * share:>7.0f}%"
        )
    overhead = full["wall_s"] - full["time_train_s"]
    print(
        f"\neverything but training (eval + logging + start-up + process): {overhead:.1f} s "
        f"= {100 * overhead / full['wall_s']:.0f}% of the extrapolated wall time"
    )
    gflops = training_flop(e2 - e1) / (r2["time_train_s"] - r1["time_train_s"]) / 1e9
    print(
        f"training arithmetic {training_flop(FULL_EPOCHS) / 1e12:.2f} TFLOP; achieved "
        f"{gflops:.0f} GFLOP/s = {100 * gflops / args.peak_gflops:.0f}% of the "
        f"{args.peak_gflops:.0f} GFLOP/s FP32 peak"
    )
    print(f"peak resident memory of the largest process: {peak_mb:.0f} MB")
    print(f"mean final test accuracy after {e2} epochs: {r2['test_acc_mean']:.4f}")


if __name__ == "__main__":
    main()
