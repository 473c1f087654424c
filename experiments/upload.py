"""Fill the MLflow store from a job's bundle: one FINISHED job run with all its replica runs.

The same code serves the job itself (right after it wrote its bundle) and `experiments.sync`
(later, for a job whose store failed or whose process died while logging). It is idempotent:
runs are found again by their `mtl.bundle_id` tag before any is created, values already stored
are not stored twice, and runs already FINISHED are left alone. So it completes whatever a
killed upload left, and a second upload of the same bundle adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric
from omegaconf import OmegaConf

from experiments.bundle import Bundle
from experiments.config import flatten
from experiments.errors import StoreUnavailable
from experiments.plots import ReplicaFigures, replica_figures
from experiments.record_format import (
    MEAN,
    Artifact,
    Kind,
    Tag,
    replica_name,
    replica_tags,
    split_config,
    time_key,
    where,
)
from experiments.records import (
    Forked,
    curves_of,
    job_metrics,
    replica_metrics,
    replica_yaml_writer,
    replicas_csv,
    write_replica_folders,
)
from experiments.tracking import (
    HISTORY_POINTS,
    HISTORY_TOLERANCE,
    Tracker,
    now_ms,
)


@dataclass
class UploadReport:
    """What an upload did: the runs it finished now and those that were there already."""

    job_run_id: str
    run_ids: list[str] = field(default_factory=list)  # runs this upload ended FINISHED
    created: int = 0  # replica runs created now
    already: int = 0  # replica runs found FINISHED
    bulk: bool = False  # the sqlite bulk path stored the metrics
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.run_ids:
            return f"already complete: job run {self.job_run_id} and {self.already} replica runs"
        return (
            f"job run {self.job_run_id}: finished {len(self.run_ids)} run(s) "
            f"({self.created} replica runs created now, {self.already} were complete)"
        )


def _find(tracker: Tracker, bundle: Bundle, kind: str) -> list[Any]:
    return tracker.find_runs(where(**{Tag.BUNDLE_ID: bundle.id, Tag.KIND: kind}))


def _exists(tracker: Tracker, run_id: str | None) -> Any:
    """The run with this id if the store has it (active), else None."""
    if not run_id:
        return None
    try:
        run = tracker.call(tracker.client.get_run, run_id)
    except StoreUnavailable:
        raise
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
        return None
    return run if run.info.lifecycle_stage == "active" else None


def job_run_tags(bundle: Bundle) -> dict[str, str]:
    """Tags every run of the bundle carries besides the job's own: where the bundle is."""
    return {Tag.BUNDLE_ID: bundle.id, Tag.BUNDLE: str(bundle.path)}


def ensure_job_run(bundle: Bundle, tracker: Tracker) -> Any:
    """The bundle's job run in this store: the recorded one, one found by tag, or a new one."""
    m = bundle.manifest
    run = _exists(tracker, m.get("job_run_id"))
    if run is None:
        found = _find(tracker, bundle, Kind.JOB)
        run = found[0] if found else None
    if run is None:
        parent = m.get("sweep_run_id")
        parent = parent if _exists(tracker, parent) is not None else None
        tags = {**m["tags"], **job_run_tags(bundle), Tag.KIND: Kind.JOB}
        run_id = tracker.start_run(m["name"], tags, parent_run_id=parent, start_time=m["start_ms"])
        run = tracker.call(tracker.client.get_run, run_id)
    if m.get("job_run_id") != run.info.run_id:
        bundle.update(job_run_id=run.info.run_id)
    return run


def _replica_runs(bundle: Bundle, tracker: Tracker) -> dict[int, Any]:
    """seed -> run for every seed: the existing runs (by bundle tag), then new ones."""
    by_seed: dict[int, Any] = {}
    for run in _find(tracker, bundle, Kind.REPLICA):
        seed = int(run.data.tags.get(Tag.SEED, -1))
        old = by_seed.get(seed)
        if old is None or (old.info.status != "FINISHED" and run.info.status == "FINISHED"):
            if old is not None:
                tracker.call(tracker.client.delete_run, old.info.run_id)
            by_seed[seed] = run
        else:  # a duplicate left by an interrupted creation: not to be counted twice
            tracker.call(tracker.client.delete_run, run.info.run_id)
    return by_seed


def _new_replica_runs(
    bundle: Bundle, tracker: Tracker, result: Any, seeds: list[int], job_run_id: str
) -> list[str]:
    m = bundle.manifest
    tags = {
        **replica_tags(m["tags"]),  # how it ran and the provenance: on the job run, its parent
        **job_run_tags(bundle),
        Tag.KIND: Kind.REPLICA,
        Tag.JOB_RUN_ID: job_run_id,
    }
    index = {s: r for r, s in enumerate(result.seeds)}
    num = m["tags"].get(Tag.JOB_NUM)
    study = m["tags"].get(Tag.STUDY, "")
    runs = [
        (
            replica_name(seed, int(num) if num is not None else None, study),
            {
                **tags,
                Tag.SEED: str(seed),
                Tag.DIVERGED: "true" if bool(result.diverged[index[seed]]) else "false",
            },
        )
        for seed in seeds
    ]
    return tracker.start_runs(runs, parent_run_id=job_run_id, start_time=m["start_ms"])


def _fill_replicas(
    bundle: Bundle,
    tracker: Tracker,
    result: Any,
    todo: dict[int, str],
    cfg: Any,
    writer: Forked,
) -> tuple[bool, dict[str, float]]:
    """Metrics and params of the replica runs in `todo` (seed -> run id), and the job run's
    folder; then end the replica runs FINISHED. `writer` (the forked process of `_artifacts`)
    makes and uploads their artifacts meanwhile, on the other core. The curves go into the
    metric history at up to `tracker.history_points` per curve, as `curve_points` chooses them
    (curves.csv has every point)."""
    t0 = time.perf_counter()
    curves = curves_of(result)
    index = {s: r for r, s in enumerate(result.seeds)}
    ts = int(bundle.manifest["logged_ms"])
    flat = flatten(cfg)
    bulk = tracker.bulk_log(
        {
            run_id: (
                replica_metrics(
                    curves,
                    result,
                    index[seed],
                    ts,
                    tracker.history_points,
                    tracker.history_tolerance,
                ),
                split_config(flat, seed=seed)[0],
            )
            for seed, run_id in todo.items()
        }
    )
    t_metrics = time.perf_counter() - t0
    job_folder(bundle, result, cfg)  # the job run's files, while the writer may still work
    t_files, t_fig = writer.result()
    t1 = time.perf_counter()
    tracker.end_runs(list(todo.values()), "FINISHED")
    return bulk, {
        "metrics": t_metrics,
        "artifacts": t_files,
        "figures": t_fig,
        "artifacts_wall": t1 - t0,
        "finish": time.perf_counter() - t1,
    }


def _artifacts(
    bundle: Bundle,
    tracker: Tracker,
    result: Any,
    cfg: Any,
    figures: ReplicaFigures | None,
    inbox: Callable[[], Any],
) -> tuple[float, float]:
    """(In the forked process, started before the replica runs are created.) The replica
    folders, made once (their figures on `figures`, prepared by the parent); then, with the
    runs to fill from `inbox()` ((seed -> run id, run id -> artifact uri)), their upload (one
    run per thread on a server, `tracker.workers` at a time)."""
    t_files = t_fig = 0.0
    if not bundle.replicas_dir.is_dir():
        t_files, t_fig = write_replica_folders(
            bundle.replicas_dir,
            result,
            replica_yaml_writer((bundle.path / "config.yaml").read_text()),
            plots=figures,
            weights=bool(cfg.tracking.replica_weights),
        )
    todo, uris = inbox()
    tracker.artifact_uris.update(uris)  # the forked writer must not query the store
    t0 = time.perf_counter()

    def send(item: tuple[int, str]) -> None:
        seed, run_id = item
        folder = bundle.replicas_dir / str(seed)
        tracker.call(tracker.artifact_repo(run_id).log_artifacts, str(folder))

    tracker.parallel(send, todo.items())
    return t_files + time.perf_counter() - t0, t_fig


def _replica_figures(bundle: Bundle, result: Any, cfg: Any) -> ReplicaFigures | None:
    """The replica figures' background, drawn before the writer forks (plots.py), if any are
    to be drawn."""
    if not cfg.tracking.replica_figures or bundle.replicas_dir.is_dir():
        return None
    keep = ~result.diverged.numpy()
    return replica_figures(curves_of(result), keep, int(cfg.tracking.figure_dpi))


def sizes_of(cfg: Any) -> dict[str, int]:
    """The number of points each accuracy counts (its exact fractions are k / n)."""
    return {"train_acc": int(cfg.data.n_train), "test_acc": int(cfg.data.n_test)}


def _stored_steps(tracker: Tracker, run_id: str) -> dict[str, set[int]]:
    """The mean-curve steps the job run has already (sent while it trained)."""
    history = tracker.client.get_metric_history
    return {key: {m.step for m in tracker.call(history, run_id, key)} for key in MEAN.values()}


def job_folder(bundle: Bundle, result: Any, cfg: Any) -> Any:
    """The job run's own artifacts in the bundle (replicas.csv, figures/curves.png), made once."""
    from experiments.plots import job_figure

    folder = bundle.path / "job"
    if not folder.is_dir():
        tmp = bundle.path / ".job.tmp"
        tmp.mkdir(exist_ok=True)
        curves = curves_of(result)
        (tmp / Artifact.REPLICAS_CSV).write_text(replicas_csv(curves, result))
        n_div = int(result.diverged.sum())
        title = f"{bundle.manifest['name']}: {len(result.seeds)} seeds" + (
            f", {n_div} diverged" if n_div else ""
        )
        loss = f"{str(cfg.model.loss).upper()} loss"
        job_figure(tmp / Artifact.JOB_FIGURE, curves, title, loss, int(cfg.tracking.figure_dpi))
        tmp.rename(folder)
    return folder


def _part(name: str) -> str:
    """A timing's part name; bundles of format 1 named them time_<part>_s."""
    return name[5:-2] if name.startswith("time_") and name.endswith("_s") else name


def _time_metrics(job_timings: dict, upload_timings: dict, ts: int, step: int) -> list[Metric]:
    """time/<part>_s metrics: the job's parts and the upload's; the total includes both."""
    times = {_part(k): float(v) for k, v in job_timings.items()}
    times.update(upload_timings)
    times["total"] = times.get("total", 0.0) + upload_timings.get("logging", 0.0)
    return [Metric(time_key(part), seconds, ts, step) for part, seconds in times.items()]


def _finish_job(
    bundle: Bundle, tracker: Tracker, job_run: Any, result: Any, job: dict, report: UploadReport
) -> None:
    """The job run's params, aggregate metrics, timings and artifacts; then FINISHED."""
    run_id = job_run.info.run_id
    cfg = OmegaConf.load(bundle.path / "config.yaml")
    ts = int(bundle.manifest["logged_ms"])
    last = int(result.eval_epochs[-1])
    skip = _stored_steps(tracker, run_id)
    metrics = job_metrics(curves_of(result), result, ts, sizes_of(cfg), skip)
    metrics += _time_metrics(job.get("timings", {}), report.timings, ts, last)
    params, tags = split_config(flatten(cfg))
    if report.run_ids:
        tags[Tag.BULK_INSERT] = str(report.bulk)
    if job.get("kernel"):
        tags[Tag.KERNEL] = job["kernel"]
    if job.get("trained_with"):
        tags[Tag.TRAINED_WITH] = job["trained_with"]
    tracker.log_batch(run_id, metrics, params, tags)
    tracker.call(tracker.client.log_artifact, run_id, str(bundle.path / "config.yaml"))
    tracker.call(tracker.client.log_artifacts, run_id, str(job_folder(bundle, result, cfg)))
    if (bundle.path / Artifact.PROVENANCE).is_dir():  # a dirty tree's git diff (provenance.py)
        folder = str(bundle.path / Artifact.PROVENANCE)
        tracker.call(tracker.client.log_artifacts, run_id, folder, Artifact.PROVENANCE)
    if Tag.ERROR in job_run.data.tags:  # ended KILLED or FAILED while logging, now complete
        tracker.call(tracker.client.delete_tag, run_id, Tag.ERROR)
    tracker.end_run(run_id, "FINISHED")


def _upload_replicas(
    bundle: Bundle, tracker: Tracker, result: Any, cfg: Any, report: UploadReport
) -> tuple[float, dict[str, float]]:
    """The replica runs made complete: found or created, filled and ended; their artifacts
    made and sent by a forked writer that starts before the runs are created (the folders
    need no run ids). Returns when the runs existed, and the fill's timings."""
    by_seed = _replica_runs(bundle, tracker)
    missing = [s for s in result.seeds if s not in by_seed]
    todo = {s: r.info.run_id for s, r in by_seed.items() if r.info.status != "FINISHED"}
    report.already = len(by_seed) - len(todo)
    if not (todo or missing):
        return time.perf_counter(), {}
    t0 = time.perf_counter()
    figures = _replica_figures(bundle, result, cfg)
    t_prepare = time.perf_counter() - t0
    writer = Forked(lambda inbox: _artifacts(bundle, tracker, result, cfg, figures, inbox))
    try:
        uris = {r.info.run_id: r.info.artifact_uri for r in by_seed.values()}
        if missing:
            created = _new_replica_runs(bundle, tracker, result, missing, report.job_run_id)
            todo.update(zip(missing, created, strict=True))
            uris.update({run_id: tracker.artifact_uris[run_id] for run_id in created})
            report.created = len(created)
        runs = {s: r.info.run_id for s, r in by_seed.items()} | todo
        bundle.update(replica_run_ids={str(s): run_id for s, run_id in runs.items()})
        writer.give((todo, uris))
        t1 = time.perf_counter()
        report.bulk, split = _fill_replicas(bundle, tracker, result, todo, cfg, writer)
        split["figures"] += t_prepare
        report.run_ids += list(todo.values())
    finally:
        writer.stop()
    return t1, split


def upload(bundle: Bundle, tracker: Tracker) -> UploadReport:
    """Make the store hold the bundle's job complete; see the module docstring."""
    t0 = time.perf_counter()
    result, job = bundle.load_result()
    cfg = OmegaConf.load(bundle.path / "config.yaml")
    if "logged_ms" not in bundle.manifest:
        bundle.update(logged_ms=now_ms())
    tracker.history_points = int(cfg.tracking.get("history_points", HISTORY_POINTS)) or None
    tracker.history_tolerance = float(cfg.tracking.get("history_tolerance", HISTORY_TOLERANCE))
    job_run = ensure_job_run(bundle, tracker)
    report = UploadReport(job_run.info.run_id)
    t1, split = _upload_replicas(bundle, tracker, result, cfg, report)
    if job_run.info.status != "FINISHED" or report.run_ids:
        times = {f"logging_{k}": v for k, v in split.items()}
        times["logging_create"] = t1 - t0
        times["logging"] = time.perf_counter() - t0
        report.timings = times
        _finish_job(bundle, tracker, job_run, result, job, report)
        report.run_ids.append(report.job_run_id)
    bundle.update(state="uploaded")
    return report
