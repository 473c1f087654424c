"""What a job writes to MLflow: one run per replica and the job's aggregate, from a TrainResult.

Replica run: params = flattened config + its own seed; metrics = the four curves (step =
epoch), their final values, diverged, diverged_epoch; artifacts = config.yaml, curves.csv,
weights.pt, figures/loss.png, figures/accuracy.png. Job run: mean/std/min/max of the final
test accuracy over the replicas that did not diverge, n_replicas, n_diverged, mean curves.
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Metric

from experiments.plots import ReplicaFigures
from experiments.tracking import Tracker, now_ms
from experiments.training import TrainResult

CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")


def curves_of(result: TrainResult) -> dict[str, np.ndarray]:
    """epoch [E] and the four metrics [R, E] as numpy arrays."""
    out = {"epoch": result.eval_epochs.numpy()}
    out.update({k: getattr(result, k).double().numpy() for k in CURVES})
    return out


def curves_csv(curves: Mapping[str, np.ndarray], r: int) -> str:
    """Replica r's curves at full float64 precision, columns epoch + CURVES."""
    lines = ["epoch," + ",".join(CURVES)]
    columns = [curves[k][r] for k in CURVES]
    for i, epoch in enumerate(curves["epoch"]):
        lines.append(f"{int(epoch)}," + ",".join(repr(float(c[i])) for c in columns))
    return "\n".join(lines) + "\n"


def replica_metrics(curves: Mapping[str, np.ndarray], result: TrainResult, r: int) -> list[Metric]:
    """All of replica r's metric values, one Metric each, to be sent in batches."""
    ts = now_ms()
    epochs = [int(e) for e in curves["epoch"]]
    last = epochs[-1]
    out = [
        Metric(key, float(v), ts, e)
        for key in CURVES
        for e, v in zip(epochs, curves[key][r].tolist(), strict=True)
    ]
    out += [Metric(f"final_{key}", float(curves[key][r][-1]), ts, last) for key in CURVES]
    out.append(Metric("diverged", float(bool(result.diverged[r])), ts, last))
    out.append(Metric("diverged_epoch", float(int(result.diverged_epoch[r])), ts, last))
    return out


def job_metrics(curves: Mapping[str, np.ndarray], result: TrainResult) -> list[Metric]:
    """Aggregate over replicas: final test accuracy stats over the non-diverged ones, and the
    mean curves (step = epoch) so the UI can overlay the jobs of a sweep."""
    ts = now_ms()
    ok = ~result.diverged.numpy()
    epochs = [int(e) for e in curves["epoch"]]
    last = epochs[-1]
    final = curves["test_acc"][ok, -1]
    nan = float("nan")
    out = []
    for key in CURVES:
        mean = curves[key][ok].mean(axis=0) if ok.any() else np.full(len(epochs), nan)
        out += [
            Metric(f"{key}_mean", float(v), ts, e)
            for e, v in zip(epochs, mean.tolist(), strict=True)
        ]
    stats = {
        "test_acc_std": float(final.std(ddof=1))
        if final.size > 1
        else (0.0 if final.size else nan),
        "test_acc_min": float(final.min()) if final.size else nan,
        "test_acc_max": float(final.max()) if final.size else nan,
        "n_replicas": float(len(result.seeds)),
        "n_diverged": float(int(result.diverged.sum())),
    }
    out += [Metric(k, v, ts, last) for k, v in stats.items()]
    return out


def final_test_acc_mean(result: TrainResult) -> float:
    """The value a sweeper optimises: mean final test accuracy of the non-diverged replicas."""
    ok = ~result.diverged
    return float(result.test_acc[ok, -1].mean()) if bool(ok.any()) else math.nan


def log_replicas(
    tracker: Tracker,
    result: TrainResult,
    *,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    job_run_id: str,
    replica_yaml: Callable[[int], str],
    start_time: int,
    figures: bool = True,
    weights: bool = True,
    dpi: int = 80,
) -> dict[str, float]:
    """Create, fill and finish one run per replica under the job run; returns timings (s)."""
    t0 = time.perf_counter()
    curves = curves_of(result)
    seeds = result.seeds
    run_ids = tracker.start_runs(
        [
            (
                f"seed {seed}",
                {
                    **tags,
                    "mtl.kind": "replica",
                    "mtl.job_run_id": job_run_id,
                    "mtl.seed": str(seed),
                    "mtl.diverged": "true" if bool(result.diverged[r]) else "false",
                },
            )
            for r, seed in enumerate(seeds)
        ],
        parent_run_id=job_run_id,
        start_time=start_time,
    )
    t1 = time.perf_counter()
    t_metrics = 0.0
    # The files and figures (CPU-bound, no tracking store involved) are made in a forked
    # process on the other core while this one inserts the metrics.
    writer = Forked(
        lambda: _write_artifacts(
            tracker, run_ids, result, curves, replica_yaml, figures, weights, dpi
        )
    )
    try:
        tracker.bulk_log(
            {
                run_id: (replica_metrics(curves, result, r), {**params, "seed": str(seeds[r])})
                for r, run_id in enumerate(run_ids)
            }
        )
        t_metrics = time.perf_counter() - t1
        t_art, t_fig = writer.result()
    finally:
        writer.stop()
    t3 = time.perf_counter()
    tracker.end_runs(run_ids, "FINISHED")
    t4 = time.perf_counter()
    return {
        "create": t1 - t0,
        "metrics": t_metrics,  # in parallel with the next two; their wall time: t3 - t1
        "artifacts": t_art,
        "figures": t_fig,
        "artifacts_wall": t3 - t1,
        "finish": t4 - t3,
        "bulk": float(tracker.bulk_used),
    }


def _write_artifacts(
    tracker: Tracker,
    run_ids: list[str],
    result: TrainResult,
    curves: dict[str, np.ndarray],
    replica_yaml: Callable[[int], str],
    figures: bool,
    weights: bool,
    dpi: int,
) -> tuple[float, float]:
    """Each replica run's files; returns the seconds spent on files and on figures."""
    t0 = time.perf_counter()
    seeds = result.seeds
    plots = ReplicaFigures(curves, ~result.diverged.numpy(), dpi) if figures else None
    t_fig = 0.0
    with tempfile.TemporaryDirectory(prefix="mtl-artifacts-") as tmp:
        for r, run_id in enumerate(run_ids):
            folder = Path(tmp) / run_id
            folder.mkdir()
            (folder / "config.yaml").write_text(replica_yaml(seeds[r]))
            (folder / "curves.csv").write_text(curves_csv(curves, r))
            if weights:
                torch.save(
                    {k: v[r].clone() for k, v in result.state.items()}, folder / "weights.pt"
                )
            if plots is not None:
                tf = time.perf_counter()
                label = f"seed {seeds[r]}"
                if bool(result.diverged[r]):
                    label += f", diverged at epoch {int(result.diverged_epoch[r])}"
                plots.save(folder / "figures", curves, r, label)
                t_fig += time.perf_counter() - tf
            tracker.artifact_repo(run_id).log_artifacts(str(folder))
    return time.perf_counter() - t0 - t_fig, t_fig


class Forked:
    """fn() run in a forked child process while the caller goes on; `result()` waits for it.

    The child gets a copy of everything (no pickling of fn), sends back fn's return value or
    its error, and exits without running the parent's exit handlers.
    """

    def __init__(self, fn: Callable[[], object]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)

        def target() -> None:
            try:
                send.send(("ok", fn()))
            except BaseException as exc:  # reported to the parent, which raises it
                try:
                    send.send(("error", exc))
                except Exception:  # not picklable: its text will do
                    send.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))

        self._proc = ctx.Process(target=target, daemon=True)
        self._proc.start()
        send.close()

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
