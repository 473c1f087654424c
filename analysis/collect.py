"""Read a study back from the MLflow store: which runs, their configs, final metrics and curves.

Selection works on top-level runs (a sweep run, or a job run outside any sweep): ``--run-id``
names one, whatever its status; otherwise the newest FINISHED one matching ``--experiment`` /
``--tag`` filters is taken (all FINISHED ones with ``all_runs``), and newer runs that did not
finish are skipped and reported; with no filter, runs tagged ``mtl.study=report``. The replica
runs under the selected runs become one DataFrame row each, one per configuration and seed.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from analysis.errors import AnalysisError
from analysis.integrity import SweepCheck, check_sweep, job_counts, split_duplicates
from analysis.store import (
    MAX_EXPERIMENT_NAME,
    local_artifact,
    repo_root,
    resolve_tracking_uri,
    store_error,
    store_errors,
)
from experiments.record_format import (
    CURVES,
    DERIVED_PARAMS,
    DIVERGED_EPOCH,
    DIVERGED_METRIC,
    FINAL,
    STATS,
    VERSION,
    Artifact,
    Kind,
    Tag,
    curve_metric,
    metrics_v2,
    params_v2,
    where,
)

__all__ = ["Study", "load_study", "parse_tags", "repo_root", "resolve_tracking_uri"]

CURVE_COLUMNS = CURVES
# DataFrame column -> the metric it holds (final/test_acc is column final_test_acc).
FINAL_COLUMNS = {f"final_{curve}": FINAL[curve] for curve in CURVES}
FINAL_METRICS = tuple(FINAL_COLUMNS)
# The params that tell grid configurations apart (the report's grid search axes).
GRID_AXES = ("optim.lr", "trainer.batch_size", "model.activations")
_PAGE = 10_000  # runs per search call; the page tokens are followed to the end
_EXPERIMENT_PAGE = 1_000
_LISTED = 5  # runs named in a "nothing finished" message


@dataclass
class Study:
    """The selected runs of one analysis: replica rows, job rows, curves, and provenance."""

    tracking_uri: str
    top_runs: list[Run]  # the sweep / stand-alone job runs that were selected
    runs: pd.DataFrame  # one row per replica run
    jobs: pd.DataFrame  # one row per job run (failed jobs may have no replicas)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # long: run_id, epoch, metrics
    curves_source: str = ""
    curves_seconds: float = 0.0
    curves_missing: list[str] = field(default_factory=list)  # replica run ids without curves
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # set aside, kept_run_id
    skipped: list[Run] = field(default_factory=list)  # top-level runs passed over: not FINISHED
    sweeps: list[SweepCheck] = field(default_factory=list)  # one per selected sweep run

    @property
    def usable(self) -> pd.DataFrame:
        """Finished, non-diverged replica runs with a finite final test accuracy."""
        r = self.runs
        ok = (r["status"] == "FINISHED") & ~r["diverged"] & r["final_test_acc"].notna()
        return r[ok]

    def counts(self) -> dict[str, int]:
        """How many runs of each kind; nothing dropped without being counted here.

        replica_runs = duplicates + finished + failed + killed + unfinished.
        """
        r = self.runs
        failed_jobs, rerun_jobs = job_counts(self.jobs)
        return {
            "replica_runs": len(r) + len(self.duplicates),
            "duplicates": len(self.duplicates),
            "finished": int((r["status"] == "FINISHED").sum()),
            "failed": int((r["status"] == "FAILED").sum()),
            "killed": int((r["status"] == "KILLED").sum()),
            "unfinished": int((~r["status"].isin(["FINISHED", "FAILED", "KILLED"])).sum()),
            "diverged": int(r["diverged"].sum()),
            "missing_final_test_acc": int(
                ((r["status"] == "FINISHED") & ~r["diverged"] & r["final_test_acc"].isna()).sum()
            ),
            "used": len(self.usable),
            "job_runs": len(self.jobs),
            "failed_jobs": failed_jobs,
            "rerun_jobs": rerun_jobs,
            "incomplete_sweeps": sum(not s.complete for s in self.sweeps),
            "skipped_top_runs": len(self.skipped),
        }

    def warnings(self, limit: int | None = 10) -> list[str]:
        """What a reader must know about the selection: runs skipped, set aside, missing.

        ``limit``: how many missing configurations to name per sweep (None: all)."""
        out = [
            f"skipped {r.info.run_id} ({r.data.tags.get(Tag.KIND, '?')}, {_status(r)}): "
            "not FINISHED"
            for r in self.skipped
        ]
        if len(self.duplicates):
            n = len(self.duplicates)
            out.append(
                f"{n} replica run(s) repeat a configuration (mtl.config_hash) and seed already "
                "selected and were set aside: each counts once, the latest FINISHED run kept "
                "(summary.json lists them under duplicates)."
            )
        out += [s.describe(limit) for s in self.sweeps if not s.complete]
        return out

    @property
    def study_name(self) -> str:
        """The mtl.study tag shared by the selected runs ("mixed" if they differ)."""
        names = {r.data.tags.get(Tag.STUDY, "unknown") for r in self.top_runs}
        return names.pop() if len(names) == 1 else "mixed"

    def config_columns(self) -> list[str]:
        """Param columns whose value differs between replica runs (seed excluded)."""
        params = [c for c in self.runs.columns if c.startswith("params.")]
        skip = {"params.seed"}
        return [
            c
            for c in params
            if c not in skip and self.runs[c].astype(str).nunique(dropna=False) > 1
        ]


def _tag_filter(tags: dict[str, str]) -> str:
    return where(**tags)


def _search(
    client: MlflowClient, experiment_ids: Sequence[str], filter_string: str, order_by=None
) -> list[Run]:
    """All runs matching the filter (paged: the store returns at most a page per call)."""
    out: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids),
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE,
            order_by=order_by,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _experiments(client: MlflowClient) -> list:
    """All active experiments (paged: a store returns at most 1,000 per call by default)."""
    out: list = []
    token = None
    while True:
        page = client.search_experiments(max_results=_EXPERIMENT_PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["k=v", ...]`` into a dict, or raise naming the bad item."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AnalysisError(
                f"--tag {item!r} is not of the form key=value (e.g. --tag mtl.study=report)."
            )
        tags[key.strip()] = value.strip()
    return tags


def _status(run: Run) -> str:
    status = run.info.status
    return "RUNNING: crashed or still running" if status == "RUNNING" else status


def _run_by_id(client: MlflowClient, run_id: str) -> Run:
    """The sweep or job run ``run_id``, whatever its status, or raise naming what it is."""
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the store failed, not the id: reported as a store error
        raise AnalysisError(
            f"--run-id {run_id!r} is not a run in the store ({e.message.splitlines()[0]}). "
            "Give the id of a sweep or job run (see the MLflow UI or `mlflow runs list`)."
        ) from None
    kind = run.data.tags.get(Tag.KIND)
    if kind not in (Kind.SWEEP, Kind.JOB):
        hint = ""
        if kind == Kind.REPLICA:
            hint = f" Its job run is {run.data.tags.get(Tag.JOB_RUN_ID, '?')}."
        raise AnalysisError(
            f"--run-id {run_id} is a run with mtl.kind={kind!r}; the analysis takes a sweep "
            f"or a job run (mtl.kind 'sweep' or 'job').{hint}"
        )
    return run


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The id of ``experiment`` (all experiments if None), or raise naming the existing ones."""
    if experiment is None:
        return [e.experiment_id for e in _experiments(client)]
    shown = experiment if len(experiment) <= 80 else f"{experiment[:60]}... ({len(experiment)})"
    exp = None
    if len(experiment) <= MAX_EXPERIMENT_NAME:
        exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in _experiments(client))
        why = (
            f"is {len(experiment)} characters long; MLflow accepts experiment names of at most "
            f"{MAX_EXPERIMENT_NAME}, so none has it"
            if len(experiment) > MAX_EXPERIMENT_NAME
            else "does not exist in the store"
        )
        raise AnalysisError(
            f"--experiment {shown!r} {why}; existing experiments: {', '.join(names) or '(none)'}."
        )
    return [exp.experiment_id]


def _top_level(client: MlflowClient, exp_ids: list[str], tags: dict[str, str]) -> list[Run]:
    """Sweep runs and stand-alone job runs matching ``tags``, newest first, any status."""
    found = []
    for kind in (Kind.SWEEP, Kind.JOB):
        found += _search(client, exp_ids, _tag_filter({**tags, Tag.KIND: kind}))
    # A job inside a sweep is analysed through its sweep, not on its own.
    top = [
        r
        for r in found
        if r.data.tags.get(Tag.KIND) == Kind.SWEEP
        or not ({Tag.SWEEP_RUN_ID, Tag.PARENT_RUN_ID} & set(r.data.tags))
    ]
    return sorted(top, key=lambda r: r.info.start_time or 0, reverse=True)


def _describe_run(run: Run) -> str:
    started = datetime.fromtimestamp((run.info.start_time or 0) / 1000).strftime("%Y-%m-%d %H:%M")
    study = run.data.tags.get(Tag.STUDY, "?")
    return f"{run.info.run_id} ({run.data.tags.get(Tag.KIND, '?')} of study {study}, " + (
        f"{_status(run)}, started {started})"
    )


def _nothing_finished(top: list[Run], what: str, where: str) -> AnalysisError:
    listed = "; ".join(_describe_run(r) for r in top[:_LISTED])
    more = f"; and {len(top) - _LISTED} more" if len(top) > _LISTED else ""
    return AnalysisError(
        f"no FINISHED sweep or job run matches {what} in {where}; found {len(top)} that did not "
        f"finish: {listed}{more}. The analysis takes only FINISHED studies by default. Wait "
        "for a running one to end, re-run the study to complete it, or analyse one as it is "
        "with --run-id <id> (its unfinished runs are counted and left out of the bootstrap, "
        "and a sweep's missing jobs are named)."
    )


def select_top_runs(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    all_runs: bool = False,
) -> tuple[list[Run], list[Run]]:
    """(selected, skipped): the sweep or stand-alone job runs to analyse, and those passed over.

    ``run_id`` is taken whatever its status. Otherwise only FINISHED runs are selected; skipped
    are the runs not FINISHED that would have been selected (newer than the chosen one, or all
    of them with ``all_runs``).
    """
    if run_id:
        return [_run_by_id(client, run_id)], []
    tags = dict(tags or {})
    if experiment is None and not tags:
        tags = {Tag.STUDY: "report"}  # the default: the latest report study,
        if client.get_experiment_by_name("report") is not None:
            experiment = "report"  # in its own experiment (not a lr check run with the preset)
    exp_ids = _experiment_ids(client, experiment)
    top = _top_level(client, exp_ids, tags)
    what = ", ".join(f"{k}={v}" for k, v in tags.items()) or "no tag filter"
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    if not top:
        studies = sorted(
            {
                r.data.tags.get(Tag.STUDY, "?")
                for r in _search(client, exp_ids, _tag_filter({Tag.KIND: Kind.JOB}))
            }
        )
        raise AnalysisError(
            f"no sweep or job run matches {what} in {where}. Studies present in the store: "
            f"{', '.join(studies) or '(none)'}. Select one with --tag mtl.study=<name>, "
            "--experiment <name> or --run-id <sweep or job run id>."
        )
    finished = [r for r in top if r.info.status == "FINISHED"]
    if not finished:
        raise _nothing_finished(top, what, where)
    chosen = finished if all_runs else finished[:1]
    oldest = chosen[-1].info.start_time or 0
    skipped = [
        r
        for r in top
        if r.info.status != "FINISHED" and (all_runs or (r.info.start_time or 0) > oldest)
    ]
    return chosen, skipped


def _coerce(value: str) -> object:
    """Params come back as strings; numbers become numbers so they sort and plot as numbers."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _params(run: Run) -> dict[str, object]:
    """params.<key> columns: the config's values (derived ones, acts and log10_lr, left out)."""
    params = params_v2(run.data.params, run.data.tags.get(Tag.FORMAT))
    return {f"params.{k}": _coerce(v) for k, v in sorted(params.items()) if k not in DERIVED_PARAMS}


def _run_row(run: Run) -> dict[str, object]:
    t = run.data.tags
    m = metrics_v2(run.data.metrics, t.get(Tag.FORMAT))
    diverged_tag = t.get(Tag.DIVERGED)
    diverged = diverged_tag == "true" if diverged_tag is not None else m.get(DIVERGED_METRIC, 0) > 0
    row: dict[str, object] = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "job_run_id": t.get(Tag.JOB_RUN_ID, t.get(Tag.PARENT_RUN_ID, "")),
        "sweep_run_id": t.get(Tag.SWEEP_RUN_ID, ""),
        "config_hash": t.get(Tag.CONFIG_HASH, ""),
        "status": run.info.status,
        "error": t.get(Tag.ERROR, ""),
        "seed": _coerce(t[Tag.SEED]) if Tag.SEED in t else None,
        "diverged": bool(diverged),
        "diverged_epoch": m.get(DIVERGED_EPOCH, math.nan),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "artifact_uri": run.info.artifact_uri,
        "format": t.get(Tag.FORMAT, "1"),
    }
    for column, key in FINAL_COLUMNS.items():
        row[column] = m.get(key, math.nan)
    row.update(_params(run))
    return row


def _job_row(run: Run) -> dict[str, object]:
    t = run.data.tags
    m = metrics_v2(run.data.metrics, t.get(Tag.FORMAT))
    row: dict[str, object] = {
        "run_id": run.info.run_id,
        "sweep_run_id": t.get(Tag.SWEEP_RUN_ID, t.get(Tag.PARENT_RUN_ID, "")),
        "config_hash": t.get(Tag.CONFIG_HASH, ""),
        "status": run.info.status,
        "error": t.get(Tag.ERROR, ""),
        "overrides": t.get(Tag.OVERRIDES, ""),
        "command": t.get(Tag.COMMAND, ""),
        "git_commit": t.get(Tag.GIT_COMMIT, ""),
        "git_dirty": t.get(Tag.GIT_DIRTY, ""),
        "n_replicas": m.get(STATS["n_replicas"], math.nan),
        "n_diverged": m.get(STATS["n_diverged"], math.nan),
    }
    row.update(_params(run))
    return row


def _children(client: MlflowClient, exp: list[str], parent: str, link: str, kind: str) -> list[Run]:
    """Runs of ``kind`` under ``parent``: by our link tag, or by MLflow's own parent tag."""
    found = {}
    for key in (link, Tag.PARENT_RUN_ID):
        for run in _search(client, exp, _tag_filter({key: parent, Tag.KIND: kind})):
            found[run.info.run_id] = run
    return list(found.values())


def check_format(runs: Sequence[Run]) -> None:
    """Refuse runs written in a newer record format than this code reads (mtl.format)."""
    newer = [r for r in runs if int(r.data.tags.get(Tag.FORMAT, "0") or 0) > int(VERSION)]
    if newer:
        found = newer[0].data.tags[Tag.FORMAT]
        raise AnalysisError(
            f"{len(newer)} run(s), e.g. {newer[0].info.run_id}, were written in record format "
            f"{found} (tag {Tag.FORMAT}); this analysis reads formats up to {VERSION}. Update "
            "minitorch-lab (pip install -e . in a newer checkout) to analyse them."
        )


def collect_runs(
    client: MlflowClient, top_runs: Sequence[Run]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per replica run and one per job run under ``top_runs``."""
    replicas: list[Run] = []
    jobs: list[Run] = []
    for top in top_runs:
        exp = [top.info.experiment_id]
        if top.data.tags.get(Tag.KIND) == Kind.SWEEP:
            jobs += _children(client, exp, top.info.run_id, Tag.SWEEP_RUN_ID, Kind.JOB)
        else:
            jobs.append(top)
    for job in jobs:
        exp = [job.info.experiment_id]
        replicas += _children(client, exp, job.info.run_id, Tag.JOB_RUN_ID, Kind.REPLICA)
    check_format([*top_runs, *jobs, *replicas])
    runs = pd.DataFrame([_run_row(r) for r in replicas])
    if runs.empty:
        runs = pd.DataFrame(
            columns=["run_id", "status", "diverged", "seed", "config_hash", *FINAL_METRICS]
        )
    else:
        runs = runs.sort_values(["config_hash", "seed"], kind="stable").reset_index(drop=True)
    runs["diverged"] = runs["diverged"].astype(bool)
    return runs, pd.DataFrame([_job_row(j) for j in jobs])


def _curves_from_artifact(
    client: MlflowClient, run_id: str, artifact_uri: str, tmp: str
) -> pd.DataFrame | None:
    local = local_artifact(artifact_uri, Artifact.CURVES_CSV)
    if local is not None:
        # Read in place: download_artifacts would copy the file and ask the store for the run.
        if not local.is_file():
            return None
        path = str(local)
    else:
        # From the run's artifact store at once (download_artifacts would first ask the
        # tracking store for the run: one more request a run).
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        dst = os.path.join(tmp, run_id)
        os.makedirs(dst, exist_ok=True)
        try:
            if artifact_uri:
                repo = get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri)
                path = repo.download_artifacts(Artifact.CURVES_CSV, dst_path=dst)
            else:
                path = client.download_artifacts(run_id, Artifact.CURVES_CSV, dst_path=dst)
        except (MlflowException, OSError):
            return None
    df = pd.read_csv(path)
    missing = {"epoch", *CURVE_COLUMNS} - set(df.columns)
    if missing:
        raise AnalysisError(
            f"curves.csv of run {run_id} lacks columns {sorted(missing)}; expected "
            f"epoch,{','.join(CURVE_COLUMNS)} (the contract's replica artifact)."
        )
    return df[["epoch", *CURVE_COLUMNS]]


def _curves_from_metrics(client: MlflowClient, run_id: str, version: str) -> pd.DataFrame | None:
    """A run's curves from its metric history. Each curve may keep its own steps (the harness
    keeps those that draw it, experiments/tracking.py curve_points), so every curve is read at
    every step as its chart draws it: linearly between its stored points (a NaN next to a
    point stays NaN, a gap)."""
    series = {}
    for key in CURVE_COLUMNS:
        hist = client.get_metric_history(run_id, curve_metric(key, version))
        if hist:
            points = sorted({h.step: h.value for h in hist}.items())
            series[key] = np.array(points, dtype=float).T
    if not series:
        return None
    steps = np.unique(np.concatenate([s[0] for s in series.values()]))
    cols = {key: np.interp(steps, s[0], s[1]) for key, s in series.items()}
    return pd.DataFrame({"epoch": steps.astype(int), **cols})


def load_curves(
    client: MlflowClient,
    runs: pd.DataFrame,
    *,
    source: str = "artifact",
    workers: int | None = None,
    verbose: bool = False,
) -> tuple[pd.DataFrame, list[str], float]:
    """Curves of the runs (rows with run_id, artifact_uri) as one long DataFrame.

    ``source``: "artifact" reads each run's curves.csv (one file per run), "metrics" the step
    metrics (four queries per run, much slower; times in benchmarks/README.md).
    Runs whose curves are missing from the chosen source are retried from the other one; those
    missing from both are returned. ``workers`` threads (default: 1 for a local store, where
    threads only contend, 8 for a server, where they overlap round trips).
    """
    if source not in ("artifact", "metrics"):
        raise AnalysisError(f"curves source {source!r} is not known; accepted: artifact, metrics.")
    t0 = time.perf_counter()
    frames: dict[str, pd.DataFrame] = {}

    run_ids = list(runs["run_id"])
    uris = dict(zip(runs["run_id"], runs.get("artifact_uri", [""] * len(runs)), strict=True))
    versions = dict(zip(runs["run_id"], runs.get("format", [VERSION] * len(runs)), strict=True))
    if workers is None:
        local = client.tracking_uri.startswith(("sqlite:", "file:", "/"))
        workers = 1 if local else 8

    def fetch(run_id: str, tmp: str) -> tuple[str, pd.DataFrame | None]:
        first, second = (
            (lambda: _curves_from_artifact(client, run_id, uris[run_id], tmp)),
            (lambda: _curves_from_metrics(client, run_id, versions[run_id])),
        )
        if source == "metrics":
            first, second = second, first
        df = first()
        return run_id, df if df is not None else second()

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, workers)) as pool:
        for run_id, df in pool.map(lambda r: fetch(r, tmp), run_ids):
            if df is not None:
                frames[run_id] = df
    missing = [r for r in run_ids if r not in frames]
    if verbose:
        print(
            f"curves of {len(frames)}/{len(run_ids)} runs from {source} "
            f"({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    if frames:
        curves = pd.concat(
            [df.assign(run_id=rid) for rid, df in frames.items()], ignore_index=True
        )[["run_id", "epoch", *CURVE_COLUMNS]]
    else:
        curves = pd.DataFrame(columns=["run_id", "epoch", *CURVE_COLUMNS])
    return curves, missing, time.perf_counter() - t0


def load_study(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    all_runs: bool = False,
    curves: str | None = "artifact",
    verbose: bool = False,
) -> Study:
    """Select runs, build the replica and job DataFrames and (unless ``curves=None``) curves.

    Replica runs repeating a configuration and seed are set aside (``Study.duplicates``), and
    each selected sweep is checked against its plan (``Study.sweeps``).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        study = _read_study(client, uri, experiment, run_id, tags, all_runs, verbose)
        if curves is not None and len(study.runs):
            study.curves, study.curves_missing, study.curves_seconds = load_curves(
                client, study.runs, source=curves, verbose=verbose
            )
            study.curves_source = curves
    except store_errors() as e:
        raise store_error(uri, e, "reading the runs") from None
    return study


def reap_dead_runs(
    client: MlflowClient, uri: str, experiment: str | None, run_id: str | None, verbose: bool
) -> None:
    """End the runs whose process is gone (experiments/reaper.py: KILLED, or FINISHED from
    the job's bundle) in the experiments this analysis reads, before it picks a study.
    A store it cannot write (read-only) is read as it is, with a warning."""
    from experiments.reaper import reap
    from experiments.tracking import Tracker

    if "mode=ro" in uri:
        return  # opened read-only on purpose
    if experiment is not None:
        names = [experiment]
    elif run_id:
        try:
            names = [client.get_experiment(client.get_run(run_id).info.experiment_id).name]
        except Exception:
            return  # select_top_runs reports the bad id
    else:
        names = [e.name for e in _experiments(client)]
    say = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    for name in names:
        if client.get_experiment_by_name(name) is None:
            continue  # select_top_runs reports it; nothing is created here
        try:
            reap(Tracker(uri, name, retry_s=10.0), say=say)
        except Exception as exc:  # read-only store, or a fault the reading will report
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"warning: dead runs in experiment {name!r} not ended ({first})", file=sys.stderr)


def _read_study(
    client: MlflowClient,
    uri: str,
    experiment: str | None,
    run_id: str | None,
    tags: dict[str, str] | None,
    all_runs: bool,
    verbose: bool,
) -> Study:
    """The Study without curves: selection, replica and job rows, duplicates, sweep checks."""
    reap_dead_runs(client, uri, experiment, run_id, verbose)
    top, skipped = select_top_runs(
        client, experiment=experiment, run_id=run_id, tags=tags, all_runs=all_runs
    )
    t0 = time.perf_counter()
    found, jobs = collect_runs(client, top)
    runs, duplicates = split_duplicates(found)
    if verbose:
        print(
            f"selected {len(top)} top-level run(s): {len(jobs)} job run(s), {len(found)} replica "
            f"run(s), {len(duplicates)} duplicate(s) ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    sweeps = [
        check_sweep(client, t, jobs[jobs["sweep_run_id"] == t.info.run_id] if len(jobs) else jobs)
        for t in top
        if t.data.tags.get(Tag.KIND) == Kind.SWEEP
    ]
    return Study(uri, list(top), runs, jobs, duplicates=duplicates, skipped=skipped, sweeps=sweeps)
