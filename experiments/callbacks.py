"""The Hydra callback that hangs every job of a multirun under one MLflow "sweep" run.

on_multirun_start checks every job's config (basic sweeper), checks the store, creates the
experiment and the sweep run, and tells the jobs its id twice: in the environment (inherited
by joblib/submitit worker processes, which start after this) and in a file in the sweep dir
(found by jobs on other machines, e.g. SLURM). on_multirun_end logs the best job and ends the
run FINISHED; if the multirun dies first, `end_active_sweep` (from main, or atexit) ends it
FAILED or KILLED. Nothing from MLflow is imported until a multirun starts.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.record_format import (
    BEST,
    JOBS_FINISHED,
    N_JOBS,
    STATS,
    TEST_ACC_MEAN,
    Artifact,
    Kind,
    Tag,
    metrics_v2,
    split_config,
    sweep_name,
    where,
)

log = logging.getLogger(__name__)

SWEEP_ENV = "MTL_SWEEP_RUN_ID"
SWEEP_FILE = "mlflow_sweep.json"
MAX_JOBS_TO_PRECHECK = 2000

# (tracker, run_id) of the sweep run this process opened and has not ended yet.
_active: dict[str, Any] = {}
# The overrides of every job the precheck of this process's sweep has checked.
_prechecked: set[tuple[str, ...]] = set()


def sweep_run_id_for(sweep_dir: str | None) -> str | None:
    """The sweep run a multirun job belongs to: the sweep dir's file, else the environment."""
    return str(_sweep_file(sweep_dir).get("run_id") or os.environ.get(SWEEP_ENV) or "") or None


def swept_keys_for(sweep_dir: str | None) -> list[str]:
    """The keys the sweep varies (from the sweep dir's file), which job names show."""
    return list(_sweep_file(sweep_dir).get("swept", []))


def _sweep_file(sweep_dir: str | None) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_FILE if sweep_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def end_active_sweep(status: str, error: str | None = None) -> None:
    """End the open sweep run (FAILED/KILLED) when the multirun stops before its end."""
    tracker, run_id = _active.pop("tracker", None), _active.pop("run_id", None)
    if tracker is None:
        return
    try:
        if error:
            tracker.call(tracker.client.set_tag, run_id, Tag.ERROR, error[:5000])
        _log_summary(tracker, run_id)
        tracker.end_run(run_id, status)
        _reap_stopped_jobs(tracker, run_id)
    except Exception as exc:
        log.error("could not end sweep run %s: %s", run_id, exc)
    os.environ.pop(SWEEP_ENV, None)


def _reap_stopped_jobs(tracker: Any, sweep_run_id: str, wait_s: float = 5.0) -> None:
    """End KILLED the runs of the sweep's jobs that stopped with it without ending them: joblib
    kills its workers (SIGKILL) when the sweep is stopped. Waits up to `wait_s` for such runs
    of this host to have lost their process (the reaper's test); jobs in this process, or on
    other hosts, are not waited for."""
    from experiments.reaper import reap

    here = where(**{Tag.SWEEP_RUN_ID: sweep_run_id, Tag.HOST: socket.gethostname()},
                 status="RUNNING")  # fmt: skip
    deadline = time.monotonic() + wait_s
    while True:
        reap(tracker, say=log.info)
        if not tracker.find_runs(here) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _at_exit() -> None:
    end_active_sweep("FAILED", "the multirun stopped before on_multirun_end")


def _task(config: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def _parsed_overrides(config: DictConfig) -> list[Any]:
    """The sweep's overrides (hydra.sweeper.params, then the command line's), parsed by Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    return OverridesParser.create().parse_overrides(args)


def _job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, as the basic sweeper expands them (its `split_arguments`: one value
    per key, the last given wins, the product of the swept values); None for other sweepers and
    sweeps it cannot expand (it reports those itself)."""
    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    axes: dict[str, list[str]] = {}
    for o in _parsed_overrides(config):
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            return None
    return [list(job) for job in itertools.product(*axes.values())]


def _skip_second_composition(planned: list[dict[str, Any]] | None) -> None:
    """Before launching a batch, Hydra's basic sweeper composes each of its jobs once more, only
    to see that it composes (`validate_batch_is_legal`: 8 s for the grid's 100 jobs, while no
    job runs). The precheck has just checked the same jobs, with the configs Hydra composes
    (tested), so that second composition is skipped for them; a job the precheck did not list
    (another sweeper's, or overrides spelled otherwise) is still composed by Hydra."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    _prechecked.clear()
    _prechecked.update(tuple(job["overrides"]) for job in planned or [])
    if getattr(BasicSweeper.validate_batch_is_legal, "prechecked", None) is _prechecked:
        return
    hydras_check = BasicSweeper.validate_batch_is_legal

    def validate_batch_is_legal(self: Any, batch: Any) -> None:
        rest = [overrides for overrides in batch if tuple(overrides) not in _prechecked]
        if rest:
            hydras_check(self, rest)

    validate_batch_is_legal.prechecked = _prechecked  # type: ignore[attr-defined]
    BasicSweeper.validate_batch_is_legal = validate_batch_is_legal


def _swept_axes(config: DictConfig) -> dict[str, str]:
    """key -> the values it is swept over, from hydra.sweeper.params and the command line."""
    try:
        parsed = _parsed_overrides(config)
    except Exception:
        return {}
    return {
        o.get_key_element(): o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()
    }


def _job_configs(loader: Any, config: DictConfig, jobs: list[list[str]]) -> Iterator[DictConfig]:
    """Each job's task config, as Hydra composes it: the first composed, the others derived
    from it where they differ in plain values (experiments/compose.py), else composed. An
    override that cannot be applied raises ConfigError."""
    from experiments import compose

    first = _composed(loader, config, jobs[0])
    yield first
    for overrides in jobs[1:]:
        try:
            job_cfg = compose.derived(first, jobs[0], overrides)
        except compose.NotApplied as exc:
            raise _not_applied(f"`{exc.line}`", exc.__cause__ or exc) from None
        yield job_cfg if job_cfg is not None else _composed(loader, config, overrides)


def _composed(loader: Any, config: DictConfig, overrides: list[str]) -> DictConfig:
    try:
        return _task(loader.load_sweep_config(config, overrides))
    except Exception as exc:  # Hydra's ConfigCompositionException; the detail is its cause
        raise _not_applied("the overrides", exc) from None


def _not_applied(what: str, exc: BaseException) -> Exception:
    from experiments.config import ConfigError

    lines = [str(exc).splitlines()[0]]
    if exc.__cause__ is not None and str(exc.__cause__):
        lines.append(str(exc.__cause__).splitlines()[0])
    key = getattr(exc.__cause__ or exc, "full_key", None)
    where = f" (key {key})" if key else ""
    return ConfigError(
        f"{what} cannot be applied: {': '.join(lines)}{where}. Accepted: a value of the type "
        f"the config declares for that key (experiments/config.py, conf/)."
    )


def _precheck_jobs(config: DictConfig) -> list[dict[str, Any]] | None:
    """Validate every job's config before the sweep run exists; returns the planned jobs
    (num, overrides, config_hash), or None when the sweeper's jobs cannot be listed here."""
    from hydra.core.global_hydra import GlobalHydra

    from experiments.config import ConfigError, config_hash, validate

    try:
        jobs = _job_overrides(config)
        loader = GlobalHydra.instance().config_loader()
    except Exception as exc:  # the sweeper will report a malformed sweep itself
        log.debug("no precheck: %s", exc)
        return None
    if jobs is None or len(jobs) > MAX_JOBS_TO_PRECHECK:
        validate(_task(config))
        return None
    planned = []
    configs = _job_configs(loader, config, jobs)
    for num, overrides in enumerate(jobs):
        try:
            job_cfg = next(configs)
            validate(job_cfg)
        except ConfigError as exc:
            raise ConfigError(
                f"In the multirun job with overrides `{' '.join(overrides)}`:\n\n{exc}\n\n"
                f"Nothing was run and no MLflow run was created."
            ) from None
        planned.append(
            {"num": num, "overrides": list(overrides), "config_hash": config_hash(job_cfg)}
        )
    return planned


def _job_rows(jobs: list[Any]) -> list[dict[str, Any]]:
    """The sweep's FINISHED jobs, best first, as the rows of jobs.csv (one per configuration:
    the latest run of a job re-run under a resumed sweep)."""
    latest: dict[str, Any] = {}
    for j in sorted(jobs, key=lambda j: j.info.start_time or 0):
        if j.info.status == "FINISHED":
            latest[j.data.tags.get(Tag.CONFIG_HASH, j.info.run_id)] = j
    rows = []
    for j in latest.values():
        m = metrics_v2(j.data.metrics, j.data.tags.get(Tag.FORMAT))
        rows.append({
            "job": j.data.tags.get(Tag.RUN_NAME, ""),
            "mean": m.get(TEST_ACC_MEAN, math.nan),
            **{k: m.get(STATS[k], math.nan) for k in ("test_acc_std", "test_acc_min",
                                                      "test_acc_max", "n_replicas", "n_diverged")},
            "overrides": j.data.tags.get(Tag.OVERRIDES, ""),
            "run_id": j.info.run_id,
        })  # fmt: skip
    return sorted(rows, key=lambda r: -r["mean"] if r["mean"] == r["mean"] else math.inf)


def _jobs_csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    columns = ["rank", "job", TEST_ACC_MEAN, "test_acc_std", "test_acc_min", "test_acc_max",
               "n_replicas", "n_diverged", "overrides", "run_id"]  # fmt: skip
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(columns)
    for rank, r in enumerate(rows, 1):
        out.writerow([rank, r["job"], repr(r["mean"]), *(repr(r[c]) for c in columns[3:6]),
                      int(r["n_replicas"]) if r["n_replicas"] == r["n_replicas"] else "",
                      int(r["n_diverged"]) if r["n_diverged"] == r["n_diverged"] else "",
                      r["overrides"], r["run_id"]])  # fmt: skip
    return buf.getvalue()


def _log_summary(tracker: Any, run_id: str, artifacts: bool = True) -> None:
    """The sweep's jobs found in the store: how many finished (a growing line: step = count),
    the best job's mean final test accuracy under its jobs' key, and (with `artifacts`) the
    ranked jobs.csv and figures/jobs.png."""
    from mlflow.entities import Metric

    from experiments.tracking import now_ms

    jobs = tracker.find_runs(where(**{Tag.SWEEP_RUN_ID: run_id, Tag.KIND: Kind.JOB}))
    # A job re-run under a resumed sweep (killed, then finished) is one job.
    n_jobs = len({j.data.tags.get(Tag.CONFIG_HASH, j.info.run_id) for j in jobs})
    rows = _job_rows(jobs)
    ts = now_ms()
    metrics = [Metric(N_JOBS, float(n_jobs), ts, 0),
               Metric(JOBS_FINISHED, float(len(rows)), ts, len(rows))]  # fmt: skip
    tags = {}
    scored = [r for r in rows if r["mean"] == r["mean"]]
    if scored:
        best = scored[0]
        metrics.append(Metric(BEST, best["mean"], ts, len(rows)))
        tags = {Tag.BEST_JOB_RUN_ID: best["run_id"], Tag.BEST_JOB: best["job"],
                Tag.BEST_JOB_OVERRIDES: best["overrides"]}  # fmt: skip
    tracker.log_batch(run_id, metrics, tags=tags)
    if artifacts and rows:
        _log_ranking(tracker, run_id, rows)


def _log_ranking(tracker: Any, run_id: str, rows: list[dict[str, Any]]) -> None:
    import tempfile

    from experiments.plots import jobs_figure

    run = tracker.call(tracker.client.get_run, run_id)
    title = f"{run.data.tags.get(Tag.RUN_NAME, 'sweep')}: jobs by mean final test accuracy"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / Artifact.JOBS_CSV).write_text(_jobs_csv(rows))
        points = [{"name": r["job"], "mean": r["mean"], "min": r["test_acc_min"],
                   "max": r["test_acc_max"]} for r in rows]  # fmt: skip
        jobs_figure(folder / Artifact.JOBS_FIGURE, points, title)
        tracker.call(tracker.client.log_artifacts, run_id, str(folder))


# A process updates its sweep run's progress at most this often, and spends at most 1/10 of
# its time on it: the summary reads every job run of the sweep (~0.4 s at 100 jobs in sqlite,
# growing with the sweep), where a grid job trains for ~3 s.
PROGRESS_EVERY_S = 10.0
# sweep run id -> time.monotonic() before which this process does not update it again
_progress_due: dict[str, float] = {}


def sweep_progress(tracker: Any, sweep_run_id: str) -> None:
    """A job of the sweep has finished: update the sweep run's count and best, unless this
    process did so less than PROGRESS_EVERY_S ago (or 10x the summary's own time). It never
    fails the job: the sweep's end writes the whole summary again."""
    start = time.monotonic()
    if start < _progress_due.get(sweep_run_id, -math.inf):
        return
    try:
        _log_summary(tracker, sweep_run_id, artifacts=False)
    except Exception as exc:
        log.warning("could not update the sweep run %s: %s", sweep_run_id, exc)
    _progress_due[sweep_run_id] = start + max(PROGRESS_EVERY_S, 10 * (time.monotonic() - start))


def _sweep_tags(config: DictConfig, sweep_dir: Path) -> dict[str, str]:
    """Provenance of the sweep (experiments/provenance.py), and the key that finds it again
    when the command is re-run."""
    import hashlib

    from experiments import provenance

    overrides = list(config.hydra.overrides.task)
    choices = config.hydra.runtime.choices
    study = choices.get("experiment") or "custom"
    key_text = json.dumps([study, sorted(overrides), _task(config).tracking.experiment])
    return {
        Tag.KIND: Kind.SWEEP,
        **provenance.run_tags(study, overrides, multirun=True),
        Tag.SWEEP_DIR: str(sweep_dir),
        Tag.SWEEP_KEY: hashlib.sha256(key_text.encode()).hexdigest()[:16],
        Tag.LAUNCHER: str(choices.get("hydra/launcher", "")),
    }


def _log_provenance(tracker: Any, run_id: str, config: DictConfig) -> None:
    """Hydra's composed multirun config and, for a dirty tree, the git diff, as the sweep run's
    provenance/ artifacts."""
    import tempfile

    from experiments import provenance

    with tempfile.TemporaryDirectory() as tmp:
        folder = provenance.write_files(Path(tmp) / Artifact.PROVENANCE, config)
        if folder is not None:
            tracker.call(tracker.client.log_artifacts, run_id, str(folder), Artifact.PROVENANCE)


def _earlier_sweep(tracker: Any, key: str) -> Any:
    """The latest sweep run of the same command that is not running now, if any."""
    flt = where(**{Tag.KIND: Kind.SWEEP, Tag.SWEEP_KEY: key})
    for run in tracker.find_runs(flt, max_results=10):
        if run.info.status != "RUNNING":
            return run
    return None


class MlflowSweepCallback(Callback):
    """Opens the sweep run at on_multirun_start and closes it at on_multirun_end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings and goes on; a refused config or
        # an unusable store must stop the multirun instead, before any job runs.
        from experiments.config import ConfigError

        try:
            self._start(config)
        except ConfigError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception as exc:
            end_active_sweep("FAILED", f"{type(exc).__name__}: {exc}")
            print(f"Error: could not open the MLflow sweep run: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    def _start(self, config: DictConfig) -> None:
        from experiments.reaper import reap
        from experiments.tracking import Tracker, check_tracking_uri, resolve_uri

        planned = _precheck_jobs(config)
        _skip_second_composition(planned)
        task = _task(config)
        uri = resolve_uri(task.tracking.uri)
        check_tracking_uri(uri, task.tracking.server_timeout_s)
        tracker = Tracker(uri, task.tracking.experiment, task.tracking.retry_s)
        reap(tracker, say=log.info)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tags = _sweep_tags(config, sweep_dir)
        earlier = None if task.tracking.rerun else _earlier_sweep(tracker, tags[Tag.SWEEP_KEY])
        if earlier is not None:
            run_id = earlier.info.run_id
            tracker.reopen(run_id, heartbeat=True)
            resumed = int(earlier.data.tags.get(Tag.RESUMED, "0")) + 1
            tracker.log_batch(
                run_id, tags={Tag.RESUMED: str(resumed), Tag.SWEEP_DIR: str(sweep_dir)}
            )
            log.info("resuming sweep run %s: jobs already FINISHED are not trained again", run_id)
        else:
            run_id = self._new_sweep(tracker, config, task, tags, planned)
        _active.update(tracker=tracker, run_id=run_id)
        atexit.register(_at_exit)
        _log_provenance(tracker, run_id, config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "tracking_uri": uri,
                    "experiment_id": tracker.experiment_id,
                    "swept": list(_swept_axes(config)),  # what job names show
                }
            )
        )
        os.environ[SWEEP_ENV] = run_id
        log.info("MLflow sweep run %s (%s, experiment %r)", run_id, uri, task.tracking.experiment)

    @staticmethod
    def _new_sweep(
        tracker: Any, config: DictConfig, task: DictConfig, tags: dict, planned: list | None
    ) -> str:
        """A new sweep run: its axes as params, its planned jobs as sweep_jobs.json."""
        from experiments.config import flatten

        swept = _swept_axes(config)
        n_jobs = len(planned) if planned is not None else None
        name = sweep_name(tags[Tag.STUDY], n_jobs, list(swept))
        run_id = tracker.start_run(name, tags, heartbeat=True)
        shared, cfg_tags = split_config(flatten(task))
        params = {f"sweep.{k}": v for k, v in swept.items()}
        derived = {
            "log10_lr": {"optim.lr"},  # not the base config's value if it is swept
            "acts": {"model.activations", "model.act1", "model.act2", "model.act3"},
        }
        params.update({k: v for k, v in shared.items()
                       if k not in swept and not derived.get(k, set()) & set(swept)})  # fmt: skip
        cfg_tags[Tag.N_JOBS] = str(len(planned)) if planned is not None else ""
        tracker.log_batch(run_id, params=params, tags=cfg_tags)
        if planned is not None:
            text = json.dumps({"format": 1, "jobs": planned}, indent=1)
            tracker.call(tracker.client.log_text, run_id, text, Artifact.SWEEP_JOBS)
        return run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker, run_id = _active.pop("tracker", None), _active.pop("run_id", None)
        if tracker is None:
            return
        try:
            _log_summary(tracker, run_id)
        finally:
            tracker.end_run(run_id, "FINISHED")
            os.environ.pop(SWEEP_ENV, None)
