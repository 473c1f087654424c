"""The `grid` preset end to end, against the practical peak measured beside it.

Runs `python -m experiments.train -m experiment=grid` (100 jobs x 10 seeds x 2000 epochs, its
launcher lr_groups: 2 one-thread workers, the 5 learning rates of a configuration trained
together) into a temporary sqlite store, with torch's sgemm
(2048^3, `--threads` threads) measured for `--sgemm-s` seconds right before and right after it:
on this VM the peak itself drifts by up to 1.5x within minutes, so the fraction is given
against both. Then where a worker's wall time went, from the store's job runs: before its first
job run, its jobs' start, training and logging, the time between one job run's end and the
next one's start (Hydra composing and starting the job), and its idle end.

`--extra` adds overrides, e.g. `--extra trainer.epochs=200` for a quick look,
`--extra hydra/launcher=joblib` for every job trained alone, or `--extra optim.lr=0.01
replicas=50` for the same FLOP as 20 jobs of 50 replicas (the groups' training without the
other 80 jobs' bookkeeping).

Run: python benchmarks/grid.py [--extra KEY=VALUE ...] [--threads 2] [--sgemm-s 10] [--store DIR]
"""

from __future__ import annotations

import argparse
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
           f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
           f"trainer.checkpoint_dir={store / 'checkpoints'}",
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
    """Where a worker's time went (seconds, the mean over workers of each one's sum): before its
    first job run, in its jobs' parts (from their time/ metrics), between its job runs, and after
    its last one until the sweep run ended."""
    by_pid = defaultdict(list)
    for r in jobs:
        by_pid[r.data.tags.get("mtl.pid")].append(r)
    n = len(by_pid)
    total = lambda key: sum(r.data.metrics.get(key, 0.0) for r in jobs) / n  # noqa: E731
    first, gaps, last = [], [], []
    for runs in by_pid.values():
        spans = sorted((r.info.start_time / 1e3, r.info.end_time / 1e3) for r in runs)
        first.append(spans[0][0] - sweep_start)
        gaps.append(sum(b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)))
        last.append(spans[-1][1])
    return {
        "before the first job run": statistics.mean(first),
        "job start (time/startup_s)": total("time/startup_s"),
        "training (time/train_s)": total("time/train_s"),
        "training wall (time/training_wall_s)": total("time/training_wall_s"),
        "logging (time/logging_s)": total("time/logging_s"),
        "between job runs": statistics.mean(gaps),
        "after the last job run, to the end": statistics.mean(max(last) - t for t in last),
        "workers": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for the grid")
    ap.add_argument("--threads", type=int, default=2, help="sgemm threads: the grid's cores")
    ap.add_argument("--sgemm-s", type=float, default=10.0)
    ap.add_argument("--store", type=Path, help="a new folder to keep the store in (default: a "
                    "temporary one, removed)")  # fmt: skip
    args = ap.parse_args()
    peak_before = sgemm_gflops(args.threads, args.sgemm_s)
    with tempfile.TemporaryDirectory(prefix="mtl-grid-") as tmp:
        store = args.store.resolve() if args.store else Path(tmp)
        store.mkdir(parents=True, exist_ok=args.store is None)
        wall, cpu = run_grid(store, args.extra)
        peak_after = sgemm_gflops(args.threads, args.sgemm_s)
        jobs, sweep_start = job_runs(store)
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
    print("  where a worker's time went (seconds; mean over workers of their sums):")
    for name, value in parts.items():
        print(f"    {name:<34}{value:8.3f}")


if __name__ == "__main__":
    main()
