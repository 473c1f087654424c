"""The `grid` preset end to end, against the practical peak measured beside it.

Runs `python -m experiments.train -m experiment=grid hydra/launcher=joblib` (100 jobs x 10 seeds
x 2000 epochs, 2 one-thread jobs at a time) into a temporary sqlite store, with torch's sgemm
(2048^3, `--threads` threads) measured for `--sgemm-s` seconds right before and right after it:
on this VM the peak itself drifts by up to 1.5x within minutes, so the fraction is given
against both. Then where the wall time went, from the store's job runs: the start-up before
the first job, and per job (median) training, logging and the time between one job run's end
and the next one's start in the same worker (Hydra's joblib launcher, the job's own start).

`--extra` adds overrides, e.g. `--extra trainer.epochs=200` for a quick look, or
`--extra optim.lr=0.01 replicas=50` for the same FLOP as 20 jobs of 50 replicas (what training
the 5 learning rates of each configuration together would cost, without its bookkeeping).

Run: python benchmarks/grid.py [--extra KEY=VALUE ...] [--threads 2] [--sgemm-s 10]
"""

from __future__ import annotations

import argparse
import bisect
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from step import epoch_flop
from study import sgemm_gflops

ROOT = Path(__file__).resolve().parents[1]


def run_grid(store: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree)."""
    cmd = [sys.executable, "-m", "experiments.train", "-m", "experiment=grid",
           "hydra/launcher=joblib", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
           f"hydra.sweep.dir={store / 'sweep'}", "trainer.progress=false", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def job_runs(store: Path) -> tuple[list, float]:
    """The job runs (start, end, pid, params, metrics) and the sweep run's start, in seconds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=5000
    )
    kind = {r.info.run_id: r.data.tags.get("mtl.kind") for r in runs}
    (sweep,) = [r for r in runs if kind[r.info.run_id] == "sweep"]
    jobs = [r for r in runs if kind[r.info.run_id] == "job"]
    return jobs, sweep.info.start_time / 1e3


def breakdown(jobs: list, sweep_start: float) -> dict[str, float]:
    """Medians per job of training, logging and the gap between jobs in one worker; start-up."""
    by_pid = defaultdict(list)
    for r in jobs:
        by_pid[r.data.tags.get("mtl.pid")].append((r.info.start_time / 1e3, r.info.end_time / 1e3))
    gaps = []
    for spans in by_pid.values():
        spans.sort()
        ends = [e for _, e in spans]
        for s, _ in spans[1:]:
            gaps.append(s - ends[bisect.bisect_left(ends, s) - 1])
    metric = lambda key: statistics.median(r.data.metrics[key] for r in jobs)  # noqa: E731
    return {
        "to the first job run": min(r.info.start_time for r in jobs) / 1e3 - sweep_start,
        "training (time/train_s)": metric("time/train_s"),
        "training wall (+ eval, shuffles)": metric("time/training_wall_s"),
        "logging (time/logging_s)": metric("time/logging_s"),
        "job start (time/startup_s)": metric("time/startup_s"),
        "between jobs in a worker": statistics.median(gaps) if gaps else float("nan"),
        "workers": len(by_pid),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for the grid")
    ap.add_argument("--threads", type=int, default=2, help="sgemm threads: the grid's cores")
    ap.add_argument("--sgemm-s", type=float, default=10.0)
    args = ap.parse_args()
    peak_before = sgemm_gflops(args.threads, args.sgemm_s)
    with tempfile.TemporaryDirectory(prefix="mtl-grid-") as tmp:
        wall, cpu = run_grid(Path(tmp), args.extra)
        peak_after = sgemm_gflops(args.threads, args.sgemm_s)
        jobs, sweep_start = job_runs(Path(tmp))
        parts = breakdown(jobs, sweep_start)
        flop = sum(
            epoch_flop(int(r.data.params["replicas"]), int(r.data.params["data.n_train"]))
            * int(r.data.params["trainer.epochs"])
            for r in jobs
        )  # fmt: skip
    rate = flop / wall / 1e9
    print(f"grid {' '.join(args.extra)}: {len(jobs)} jobs, {flop / 1e12:.2f} TFLOP")
    print(f"  wall {wall:.1f} s, CPU {cpu:.1f} s ({cpu / wall:.2f} cores busy): {rate:.1f} GFLOP/s")
    for name, peak in (("before", peak_before), ("after", peak_after)):
        print(
            f"  sgemm {args.threads} threads {name}: {peak:.1f} GFLOP/s -> {rate / peak:.0%} of it"
        )
    print("  where the time went (medians per job):")
    for name, value in parts.items():
        print(f"    {name:<34}{value:8.3f}")


if __name__ == "__main__":
    main()
