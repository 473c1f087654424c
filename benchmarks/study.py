"""The `report` study through the real entry point, split into its parts, extrapolated.

Runs `python -m experiments.train experiment=report trainer.epochs=E` into a temporary sqlite
store: once short as a warm-up (creating the store and the experiment), then for two values of
E. From the job run's timing metrics: training and evaluation are fitted as a + b * epochs,
MLflow logging as a + b * (evaluation points), start-up and the process's own overhead (wall
minus the parts: interpreter, imports before the app's clock) as constants; then extrapolated
to the full 4000 epochs. `--full` also runs the real 4000-epoch study and prints it beside the
extrapolation. Also: peak resident memory of the largest process, and the achieved GFLOP/s of
training against the practical FP32 peak: torch's sgemm (2048^3) on `--workers` threads,
measured here between the study runs (median), as `step.py` does; `--peak-gflops` overrides it.

Run: python benchmarks/study.py [--epochs 200 600] [--workers 2] [--full] [--peak-gflops G]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from step import sgemm_run

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("time/startup_s", "time/train_s", "time/eval_s", "time/logging_s")
FULL_EPOCHS, REPLICAS, N_TRAIN, N_TEST, EVAL_EVERY = 4000, 110, 1000, 1000, 10
SIZES = (2, 25, 25, 25, 2)


def training_flop(epochs: int) -> float:
    """Multiply-adds x 2 of forward (1x) and backward (2x: grad wrt weights and inputs)."""
    macs = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=False))
    return 2 * 3 * macs * N_TRAIN * epochs * REPLICAS


def sgemm_gflops(threads: int, seconds: float = 2.0) -> float:
    """torch's sgemm on `threads` threads for about `seconds`: GFLOP/s of its median call."""
    torch.set_num_threads(threads)
    run, flop = sgemm_run()
    run()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return flop / sorted(times)[len(times) // 2] / 1e9


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


def measure(args: argparse.Namespace) -> tuple[dict, dict, dict | None, list[float]]:
    """The runs at both epoch counts (and the full one with --full) after a warm-up, with the
    sgemm peak measured between them; each run's process overhead is its wall minus its parts."""
    e1, e2 = args.epochs
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mtl-study-") as tmp:
        run_study(20, args.workers, Path(tmp))  # warm-up: store, experiment, file caches
        peaks.append(sgemm_gflops(args.workers))
        r1 = run_study(e1, args.workers, Path(tmp))
        peaks.append(sgemm_gflops(args.workers))
        r2 = run_study(e2, args.workers, Path(tmp))
        peaks.append(sgemm_gflops(args.workers))
        full_run = run_study(FULL_EPOCHS, args.workers, Path(tmp)) if args.full else None
        if args.full:
            peaks.append(sgemm_gflops(args.workers))
    for r in (r1, r2, full_run):
        if r is not None:
            r["process_s"] = r["wall_s"] - sum(r[k] for k in PARTS)
    return r1, r2, full_run, peaks


def extrapolate(r1: dict, r2: dict, e1: int, e2: int) -> dict[str, float]:
    """Each part at the full study's epochs: training and evaluation linear in the epochs,
    logging in the evaluation points, start-up and the process's overhead constant."""
    points = {e: e // EVAL_EVERY + 1 for e in (e1, e2, FULL_EPOCHS)}

    def line(key: str, x1: float, x2: float, x: float) -> float:
        slope = (r2[key] - r1[key]) / (x2 - x1)
        return max(r1[key] + slope * (x - x1), 0.0)

    est = {
        "time/train_s": line("time/train_s", e1, e2, FULL_EPOCHS),
        "time/eval_s": line("time/eval_s", e1, e2, FULL_EPOCHS),
        "time/logging_s": line("time/logging_s", points[e1], points[e2], points[FULL_EPOCHS]),
        "time/startup_s": (r1["time/startup_s"] + r2["time/startup_s"]) / 2,
        "process_s": (r1["process_s"] + r2["process_s"]) / 2,
    }
    est["wall_s"] = sum(est.values())
    return est


def print_parts(r1: dict, r2: dict, est: dict, full_run: dict | None, e1: int, e2: int) -> None:
    """The table of parts: both runs, the estimate and its share, the full run if measured."""
    head = f"{'part':<12}{f'{e1} ep (s)':>12}{f'{e2} ep (s)':>12}{'4000 est (s)':>14}{'share':>7}"
    print(head + ("  4000 measured (s)" if full_run else ""))
    for k in ("time/train_s", "time/eval_s", "time/logging_s", "time/startup_s", "process_s",
              "wall_s"):  # fmt: skip
        name = k.removeprefix("time/").removesuffix("_s")
        line = (
            f"{name:<12}{r1[k]:>12.2f}{r2[k]:>12.2f}{est[k]:>14.1f}"
            f"{100 * est[k] / est['wall_s']:>6.0f}%"
        )
        if full_run is not None:
            line += f"{full_run[k]:>18.1f}"
        print(line)
    ref = full_run or est
    overhead = ref["wall_s"] - ref["time/train_s"]
    print(
        f"\neverything but training (eval + logging + start-up + process): {overhead:.1f} s "
        f"= {100 * overhead / ref['wall_s']:.0f}% of the {'measured' if full_run else 'estimated'}"
        f" wall time of {ref['wall_s']:.1f} s"
    )


def print_speed(args: argparse.Namespace, r1: dict, r2: dict, full_run: dict | None,
                peaks: list[float]) -> None:  # fmt: skip
    """Achieved GFLOP/s of training against the practical peak (given, or sgemm's median)."""
    e1, e2 = args.epochs
    peak = args.peak_gflops or sorted(peaks)[len(peaks) // 2]
    gflops = training_flop(e2 - e1) / (r2["time/train_s"] - r1["time/train_s"]) / 1e9
    source = "given" if args.peak_gflops else (
        f"torch sgemm 2048^3 on {args.workers} threads, median of "
        + ", ".join(f"{p:.0f}" for p in peaks)
    )  # fmt: skip
    print(
        f"training arithmetic {training_flop(FULL_EPOCHS) / 1e12:.2f} TFLOP; achieved "
        f"{gflops:.0f} GFLOP/s (slope {e1}->{e2} epochs) = {100 * gflops / peak:.0f}% of the "
        f"{peak:.0f} GFLOP/s practical peak ({source})"
    )
    if full_run is not None:
        full_gflops = training_flop(FULL_EPOCHS) / full_run["time/train_s"] / 1e9
        print(
            f"the {FULL_EPOCHS}-epoch run: {full_gflops:.0f} GFLOP/s = "
            f"{100 * full_gflops / peak:.0f}% of that peak"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs=2, default=[200, 600])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also run the real 4000-epoch study")
    ap.add_argument(
        "--peak-gflops", type=float, default=None,
        help="FP32 peak to compare with (default: torch sgemm measured between the runs)",
    )  # fmt: skip
    args = ap.parse_args()
    e1, e2 = args.epochs
    r1, r2, full_run, peaks = measure(args)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    est = extrapolate(r1, r2, e1, e2)
    print(
        f"report study, {REPLICAS} replicas, workers={args.workers}; measured at {e1} and "
        f"{e2} epochs, extrapolated to {FULL_EPOCHS}"
    )
    print_parts(r1, r2, est, full_run, e1, e2)
    print_speed(args, r1, r2, full_run, peaks)
    print(f"peak resident memory of the largest process: {peak_mb:.0f} MB")
    last = full_run or r2
    print(f"mean final test accuracy of the last run: {last['test_acc_mean']:.4f}")


if __name__ == "__main__":
    main()
