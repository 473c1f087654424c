"""What a job writes to MLflow: one run per replica and the job's aggregate, from a TrainResult.

The names are record_format's. Replica run: the four curves (step = epoch), final/<curve>,
final/diverged, final/diverged_epoch; artifacts config.yaml, curves.csv, weights.pt and two
figures. Job run: the mean curves (over the replicas not diverged at each epoch), stats/ of the
final test accuracy over the replicas that did not diverge, n_replicas, n_diverged; artifacts
replicas.csv (each seed's finals) and figures/curves.png (means, bands and seeds).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric

from experiments.plots import ReplicaFigures
from experiments.processes import init_worker
from experiments.record_format import (
    ACCURACIES,
    CURVE_METRIC,
    CURVES,
    DIVERGED_EPOCH,
    DIVERGED_METRIC,
    FINAL,
    MEAN,
    STATS,
    TEST_ACC_MEAN,
    Artifact,
)
from experiments.tracking import curve_points
from experiments.training import TrainResult


def curves_of(result: TrainResult) -> dict[str, np.ndarray]:
    """epoch [E] and the four metrics [R, E] as numpy arrays."""
    out = {"epoch": result.eval_epochs.numpy()}
    out.update({k: getattr(result, k).double().numpy() for k in CURVES})
    return out


def curves_csv(curves: Mapping[str, np.ndarray], r: int) -> str:
    """Replica r's curves at full float64 precision, columns epoch + CURVES."""
    columns = [[int(e) for e in curves["epoch"]], *(curves[k][r].tolist() for k in CURVES)]
    rows = (",".join(map(repr, row)) for row in zip(*columns, strict=True))
    return "epoch," + ",".join(CURVES) + "\n" + "\n".join(rows) + "\n"


def replica_metrics(
    curves: Mapping[str, np.ndarray],
    result: TrainResult,
    r: int,
    ts: int,
    points: int | None = None,
    tolerance: float = 0.0,
) -> list[Metric]:
    """Replica r's metric values, one Metric each (timestamp ts), sent in batches: its curves,
    each at most `points` values (None: all) as `curve_points` chooses them, and its finals
    (the last value of every curve is kept, so a run's latest value is its final one)."""
    epochs = [int(e) for e in curves["epoch"]]
    last = epochs[-1]
    out = []
    for key in CURVES:
        values = curves[key][r].tolist()
        kept = range(len(values))
        if points and len(values) > points:
            kept = curve_points(epochs, values, points, tolerance)
        out += [Metric(CURVE_METRIC[key], values[i], ts, epochs[i]) for i in kept]
    out += [Metric(FINAL[key], float(curves[key][r][-1]), ts, last) for key in CURVES]
    out.append(Metric(DIVERGED_METRIC, float(bool(result.diverged[r])), ts, last))
    out.append(Metric(DIVERGED_EPOCH, float(int(result.diverged_epoch[r])), ts, last))
    return out


def mean_curves(curves: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> dict:
    """Each curve's mean over the replicas not diverged at that epoch (NaN where none is).
    An accuracy's mean is the exact fraction of all points counted: sum of k / (R n), for
    `sizes` {"train_acc": n_train, "test_acc": n_test}."""
    out = {}
    for key in CURVES:
        values = np.asarray(curves[key], dtype=np.float64)
        alive = np.isfinite(values).sum(axis=0)
        if key in ACCURACIES and sizes.get(key):
            n = int(sizes[key])
            total = np.round(np.nansum(values * n, axis=0))
            out[key] = np.where(alive > 0, total / np.maximum(alive * n, 1), np.nan)
        else:
            total = np.nansum(values, axis=0)
            out[key] = np.where(alive > 0, total / np.maximum(alive, 1), np.nan)
    return out


def mean_metrics(
    epochs: list[int], means: Mapping[str, np.ndarray], ts: int, skip: Mapping[str, set] = {}
) -> list[Metric]:
    """The job run's mean curves as metrics, leaving out the steps in `skip` (key -> steps
    already stored, e.g. sent while the job trained)."""
    return [
        Metric(MEAN[key], float(v), ts, e)
        for key in CURVES
        for e, v in zip(epochs, means[key].tolist(), strict=True)
        if e not in skip.get(MEAN[key], ())
    ]


def job_metrics(
    curves: Mapping[str, np.ndarray],
    result: TrainResult,
    ts: int,
    sizes: Mapping[str, int],
    skip: Mapping[str, set] = {},
) -> list[Metric]:
    """Aggregate over replicas: the mean curves (step = epoch) so the UI can overlay the jobs of
    a sweep, and stats of the final test accuracy over the replicas that did not diverge."""
    ok = ~result.diverged.numpy()
    epochs = [int(e) for e in curves["epoch"]]
    means = mean_curves(curves, sizes)
    out = mean_metrics(epochs, means, ts, skip)
    out.append(Metric(TEST_ACC_MEAN, float(means["test_acc"][-1]), ts, epochs[-1]))
    final = curves["test_acc"][ok, -1]
    nan = float("nan")
    stats = {
        "test_acc_std": float(final.std(ddof=1))
        if final.size > 1
        else (0.0 if final.size else nan),
        "test_acc_min": float(final.min()) if final.size else nan,
        "test_acc_max": float(final.max()) if final.size else nan,
        "n_replicas": float(len(result.seeds)),
        "n_diverged": float(int(result.diverged.sum())),
    }
    out += [Metric(STATS[k], v, ts, epochs[-1]) for k, v in stats.items()]
    return out


def replicas_csv(curves: Mapping[str, np.ndarray], result: TrainResult) -> str:
    """The job's seeds and their final metrics, one row each, in seed order."""
    lines = ["seed," + ",".join(CURVES) + ",diverged,diverged_epoch"]
    for r, seed in enumerate(result.seeds):
        finals = ",".join(repr(float(curves[k][r][-1])) for k in CURVES)
        div = bool(result.diverged[r])
        lines.append(f"{seed},{finals},{str(div).lower()},{int(result.diverged_epoch[r])}")
    return "\n".join(lines) + "\n"


def final_test_acc_mean(result: TrainResult, n_test: int | None = None) -> float:
    """The value a sweeper optimises: mean final test accuracy of the non-diverged replicas
    (with n_test, the exact fraction of test points counted, as the job run stores it)."""
    ok = ~result.diverged
    if not bool(ok.any()):
        return math.nan
    final = result.test_acc[ok, -1].double()
    if n_test:
        return float(torch.round(final * n_test).sum()) / (int(ok.sum()) * n_test)
    return float(final.mean())


def replica_yaml_writer(config_yaml: str) -> Callable[[int], str]:
    """config.yaml of a replica: the job's resolved config as that seed alone (replicas: 1)."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.create(config_yaml)
    resolved.seed = 0
    resolved.replicas = 1
    text = OmegaConf.to_yaml(resolved)  # once: replicas differ only in the top-level seed line
    seed_line = re.compile(r"^seed: 0$", re.MULTILINE)
    assert len(seed_line.findall(text)) == 1, text

    def write(seed: int) -> str:
        header = (
            f"# Replica with seed {seed}; the same model alone: "
            f"python -m experiments.train seed={seed} replicas=1 ... (values below)\n"
        )
        return header + seed_line.sub(f"seed: {seed}", text)

    return write


def write_replica_folders(
    folder: Path,
    result: TrainResult,
    replica_yaml: Callable[[int], str],
    plots: ReplicaFigures | None = None,
    weights: bool = True,
) -> tuple[float, float]:
    """Each replica run's artifacts in folder/<seed>/, made in a temporary folder and renamed
    into place when all are written; figures on `plots`, prepared for this result
    (plots.replica_figures), if given. Returns the seconds spent on files and on figures."""
    t0 = time.perf_counter()
    curves = curves_of(result)
    seeds = result.seeds
    t_fig = 0.0
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for r, seed in enumerate(seeds):
        sub = tmp / str(seed)
        sub.mkdir(parents=True)
        (sub / Artifact.CONFIG).write_text(replica_yaml(seed))
        (sub / Artifact.CURVES_CSV).write_text(curves_csv(curves, r))
        if weights:
            torch.save({k: v[r].clone() for k, v in result.state.items()}, sub / Artifact.WEIGHTS)
        if plots is not None:
            tf = time.perf_counter()
            label = f"seed {seed}"
            if bool(result.diverged[r]):
                label += f", diverged at epoch {int(result.diverged_epoch[r])}"
            plots.save(sub / Artifact.REPLICA_FIGURE, curves, r, label)
            t_fig += time.perf_counter() - tf
    os.replace(tmp, folder)
    return time.perf_counter() - t0 - t_fig, t_fig


class Forked:
    """fn(inbox) run in a forked child process while the caller goes on; `result()` waits for it.

    The child gets a copy of everything (no pickling of fn), can wait for one value the parent
    sends later (`inbox()` returns what `give` sent: e.g. run ids made after the fork), sends
    back fn's return value or its error, and exits without running the parent's exit handlers.
    """

    def __init__(self, fn: Callable[[Callable[[], Any]], object]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        inbox, self._give = ctx.Pipe(duplex=False)

        parent = os.getpid()

        def target() -> None:
            init_worker(parent)
            self._give.close()  # the parent's end: EOF in inbox() if the parent goes away
            try:
                send.send(("ok", fn(inbox.recv)))
            except BaseException as exc:  # reported to the parent, which raises it
                try:
                    send.send(("error", exc))
                except Exception:  # not picklable: its text will do
                    send.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))

        self._proc = ctx.Process(target=target, daemon=True)
        self._proc.start()
        send.close()
        inbox.close()

    def give(self, value: object) -> None:
        """Send `value` to the child's `inbox()`."""
        self._give.send(value)

    def result(self):
        try:
            kind, value = self._recv.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(
                f"the artifact writer process ended without a result (exit code "
                f"{self._proc.exitcode})"
            ) from None
        self._proc.join()
        if kind == "error":
            value.add_note("(raised in the forked process that writes the replica artifacts)")
            raise value
        return value

    def stop(self) -> None:
        """End the child if it still runs (the caller failed or was interrupted)."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
        self._recv.close()
        self._give.close()
