"""What checkpoints cost `train_replicas`: the same run without and with them, side by side.

Studies (the app's settings, called directly, without Hydra and MLflow):
  report   110 replicas, 4000 epochs, batch 25, eval every 10, 2 worker processes
  grid     10 replicas, 2000 epochs, batch 10, eval every 50, 1 process (a grid job)
  grid100  the same at batch 100, the grid's fastest jobs (the largest share for checkpoints)

Each study runs without checkpoints and with `Checkpointing(folder, every)` in alternation,
`--repeats` pairs, into a fresh folder under runs/ (the disk the app's checkpoints go to; the
folder is cleared after each run). Per run: wall time, training time, and the time the shards
spent checkpointing, measured inside the same run (timings["checkpoint"]: state copy,
serialisation, write, fsync of the file and of the folder, the slower shard). The share of
training time is that in-run time over the training time; the wall-time difference between
the paired runs is printed too, but on this shared 2-core VM it drifts by more than 2%. Then
the cost per save is extrapolated to other values of `every`.

Run: python benchmarks/checkpoint.py [--study report grid grid100] [--every 200]
         [--repeats 2] [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from experiments.spec import TrainSpec
from experiments.training import CHECKPOINT_EVERY, Checkpointing, clear_checkpoints, train_replicas

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "report": dict(replicas=110, epochs=4000, batch_size=25, eval_every=10, workers=2),
    "grid": dict(replicas=10, epochs=2000, batch_size=10, eval_every=50, workers=1),
    "grid100": dict(replicas=10, epochs=2000, batch_size=100, eval_every=50, workers=1),
}
EVERY_TABLE = (50, 100, 200, 500, 1000)


def saves(epochs: int, every: int) -> int:
    """Checkpoints a shard writes: every `every` epochs before the last, and one at the end."""
    return (epochs - 1) // every + 1


def one_run(study: dict, every: int | None, folder: Path) -> dict[str, float]:
    """Train once; `every` None: without checkpoints. Returns times (s) and checkpoint size."""
    ck = None if every is None else Checkpointing(folder / f"run-{time.monotonic_ns()}", every)
    t = time.perf_counter()
    spec = TrainSpec(
        epochs=study["epochs"],
        batch_size=study["batch_size"],
        eval_every=study["eval_every"],
        workers=study["workers"],
        threads=1,  # as the app with trainer.threads=1 (both presets)
    )
    res = train_replicas(range(study["replicas"]), spec, checkpoint=ck)
    wall = time.perf_counter() - t
    size = 0
    if ck is not None:
        size = sum(p.stat().st_size for p in ck.folder.glob("shard-*.pt"))
        clear_checkpoints(ck.folder)
    return {
        "wall": wall,
        **{k: res.timings[k] for k in ("train", "eval", "checkpoint")},
        "size": size,
    }


def bench(name: str, study: dict, every: int, repeats: int) -> None:
    """Alternate runs without and with checkpoints; print each, then the shares."""
    print(f"\n## {name}: {study}, every={every}, {saves(study['epochs'], every)} saves per shard")
    print("| run | wall s | train s | eval s | checkpoint s | ms/save | ckpt/train |")
    print("|---|---|---|---|---|---|---|")
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=ROOT / "runs"))
    rows: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    n_saves = saves(study["epochs"], every)
    for i in range(repeats):
        for variant in ("without", "with") if i % 2 == 0 else ("with", "without"):
            r = one_run(study, every if variant == "with" else None, folder)
            rows[variant].append(r)
            per_save = r["checkpoint"] / n_saves * 1e3 if variant == "with" else float("nan")
            print(
                f"| {variant} #{i + 1} | {r['wall']:.2f} | {r['train']:.2f} | {r['eval']:.2f} | "
                f"{r['checkpoint']:.3f} | {per_save:.1f} | {r['checkpoint'] / r['train']:.2%} |"
            )
    folder.rmdir()
    med = lambda v, k: statistics.median(r[k] for r in rows[v])  # noqa: E731
    per_save = med("with", "checkpoint") / n_saves
    share = med("with", "checkpoint") / med("with", "train")
    print(
        f"\nin-run checkpoint time / training time: {share:.2%} (median of {repeats}); "
        f"{per_save * 1e3:.1f} ms per save of "
        f"{rows['with'][0]['size'] / 1e6:.2f} MB (all shards' files); "
        f"wall with / without: {med('with', 'wall') / med('without', 'wall'):.3f}"
    )
    train = med("without", "train")
    shares = ", ".join(
        f"{e}: {per_save * saves(study['epochs'], e) / train:.2%}" for e in EVERY_TABLE
    )
    print(f"extrapolated share of training time by `every`: {shares}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    ap.add_argument("--every", type=int, default=CHECKPOINT_EVERY)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="shorter runs (default: the study's)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the app with trainer.threads=1 (both presets)
    for name in args.study:
        study = dict(STUDIES[name])
        if args.epochs:
            study["epochs"] = args.epochs
        bench(name, study, args.every, args.repeats)


if __name__ == "__main__":
    main()
