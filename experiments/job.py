"""One job of the app, step by step: check the config, open the store, train, record.

`run` is the Hydra task function (experiments/train.py hands it to Hydra, and launchers such as
joblib and submitit pickle it by reference from here). Its steps: `validate` turns the config
into a TrainSpec before anything else happens; `_open_job` sets the threads and opens the store;
a job already FINISHED with this config and these seeds is not trained again; `_train_and_record`
writes the bundle, trains, saves the results to the bundle and uploads them to the store;
`_close_job` clears the checkpoints and reports. torch, MLflow and the training loop are
imported inside the steps, after the config check: a refused config costs a fraction of a
second instead of seconds of imports.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import callbacks, signals
from experiments.config import config_hash, flatten, validate
from experiments.errors import StoreUnavailable
from experiments.provenance import repo_root
from experiments.record_format import (
    STATS,
    TEST_ACC_MEAN,
    Artifact,
    Kind,
    Tag,
    job_name,
    metrics_v2,
    split_config,
    where,
)
from experiments.spec import TrainSpec

log = logging.getLogger("experiments.train")


def run(cfg: DictConfig, context: JobContext | None = None) -> float:
    """Check, train, record; returns the final mean test accuracy over non-diverged replicas.

    The job run's time/startup_s counts from the start of this call to the start of training
    (the config check, torch's and MLflow's imports, the store); what the process did before
    (the interpreter, Hydra composing the config) is in no time/ metric.
    """
    t_start = time.perf_counter()
    spec = validate(cfg)  # before any data, thread setting or MLflow run
    job = _open_job(cfg, spec, context or hydra_job_context(), t_start)
    earlier = None if cfg.tracking.rerun else _finished_before(job)
    if earlier is not None:
        return _already_done(job, *earlier)
    result, score, report = _train_and_record(job)
    _close_job(job, result, score, report.timings.get("logging", math.nan))
    return score


@dataclass
class JobContext:
    """Where a job sits: its preset, its overrides, and the sweep it belongs to."""

    study: str = "custom"
    overrides: list[str] = field(default_factory=list)
    sweep_run_id: str | None = None
    job_num: int | None = None
    output_dir: str | None = None  # where the job's bundle goes (Hydra's output dir)
    swept: list[str] = field(default_factory=list)  # the keys its sweep varies


def hydra_job_context() -> JobContext:
    """The running Hydra job's context (a default one outside Hydra, e.g. in tests)."""
    if not HydraConfig.initialized():
        return JobContext()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return JobContext(
        study=hc.runtime.choices.get("experiment") or "custom",
        overrides=list(hc.overrides.task),
        sweep_run_id=callbacks.sweep_run_id_for(hc.sweep.dir) if multirun else None,
        job_num=int(hc.job.num) if multirun else None,
        output_dir=hc.runtime.output_dir,
        swept=callbacks.swept_keys_for(hc.sweep.dir) if multirun else [],
    )


class Progress:
    """Epoch progress: a redrawn bar on a terminal, a line per quarter otherwise."""

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO | None = None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.next_quarter = 1

    def __call__(self, epoch: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        frac = epoch / self.total
        if self.tty:
            width = 30
            filled = int(width * frac)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            self.stream.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                f"{epoch}/{self.total} epochs {100 * frac:3.0f}% {elapsed:5.0f}s eta {eta:4.0f}s"
            )
            self.stream.flush()
        elif frac * 4 >= self.next_quarter:
            while frac * 4 >= self.next_quarter:
                self.next_quarter += 1
            log.info(
                "%s: epoch %d/%d (%.0f%%), %.1f s",
                self.label,
                epoch,
                self.total,
                100 * frac,
                elapsed,
            )

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Job:
    """One job's settings and the store it logs to, as `run` passes them between its steps."""

    cfg: DictConfig
    spec: TrainSpec
    ctx: JobContext
    tracker: Any  # experiments.tracking.Tracker (MLflow is imported after the config check)
    seeds: list[int]
    config_hash: str
    t_start: float  # when `run` started: time/startup_s counts from here

    @property
    def name(self) -> str:
        """What the sweep varies (``j19 bs10 lr0.03 tanh-tanh-relu``), else the study's main
        settings (``report lr0.01 bs25 tanh-tanh-tanh x110``); see record_format."""
        if self.ctx.job_num is not None:
            given = dict(o.lstrip("+~").split("=", 1) for o in self.ctx.overrides if "=" in o)
            settings = {k: given[k] for k in self.ctx.swept if k in given}
        else:
            settings = {"optim.lr": str(self.cfg.optim.lr),
                        "trainer.batch_size": str(self.spec.batch_size),
                        "model.activations": ",".join(self.spec.activations),
                        "replicas": str(self.cfg.replicas)}  # fmt: skip
        return job_name(settings, self.ctx.job_num, self.ctx.study)

    @property
    def checkpoint_folder(self) -> Path:
        """Where the same command finds this job's checkpoints again (not the dated Hydra dir)."""
        from experiments.tracking import safe_name

        exp = safe_name(self.cfg.tracking.experiment)
        key = f"{self.config_hash}-seed{self.seeds[0]}-n{len(self.seeds)}"
        return Path(self.cfg.trainer.checkpoint_dir) / exp / key


def _open_job(cfg: DictConfig, spec: TrainSpec, ctx: JobContext, t_start: float) -> Job:
    """Threads set, config printed, the store checked and opened (dead runs in it reaped)."""
    import torch

    from experiments.reaper import reap
    from experiments.tracking import Tracker, check_tracking_uri, resolve_uri

    torch.set_num_threads(spec.threads)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True).rstrip())
    uri = resolve_uri(cfg.tracking.uri)
    check_tracking_uri(uri, cfg.tracking.server_timeout_s)
    tracker = Tracker(uri, cfg.tracking.experiment, cfg.tracking.retry_s)
    reap(tracker, say=log.info)
    return Job(cfg, spec, ctx, tracker, _seeds(cfg), config_hash(cfg), t_start)


def _seeds(cfg: DictConfig) -> list[int]:
    return [cfg.seed + r for r in range(cfg.replicas)]


def _already_done(job: Job, run_id: str, score: float) -> float:
    log.info(
        "already done: job run %s has FINISHED this config (hash %s) with seeds %s; its "
        "final test accuracy %.4f is returned. tracking.rerun=true trains it again.",
        run_id, job.config_hash, _seeds_tag(job.seeds), score,
    )  # fmt: skip
    return score


def _train_and_record(job: Job) -> tuple[Any, float, Any]:
    """(TrainResult, score, UploadReport): the bundle and the job run, training, the results
    into the bundle, then into the store. On any failure or stop, every run this process
    opened ends FAILED or KILLED before the exception goes on."""
    from experiments.upload import upload

    _freeze_loaded_objects()
    bundle = None
    try:
        bundle = _start(job)  # inside: a stop while the job run is being created ends it too
        t_train = time.perf_counter()
        result = _train(job, bundle)
        score = _save(job, bundle, result, t_train)
        with bundle.locked():
            report = upload(bundle, job.tracker)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        job.tracker.end_all(status, signals.reason(exc))
        _explain_failure(exc, bundle)
        raise
    return result, score, report


def _freeze_loaded_objects() -> None:
    """Once per process, with torch, MLflow, matplotlib and the store loaded: everything alive
    (~500k objects, nearly all of them modules' and classes') leaves the garbage collector's
    sight (gc.freeze). A full collection then walks only what jobs allocate, ~7 ms instead of
    ~250 ms; joblib's workers force one after every job (loky, without psutil) and logging
    triggers others. Forked children (the artifact writer, training workers) also copy fewer
    pages. What is frozen is never collected: one job's settings and store, once. (A flag, not
    gc.get_freeze_count(), which walks every frozen object: ~35 ms a job.)"""
    global _frozen
    if not _frozen:
        import gc

        gc.freeze()
        _frozen = True


_frozen = False  # whether _freeze_loaded_objects has frozen this process's objects


def _close_job(job: Job, result: Any, score: float, t_logging: float) -> None:
    """The results are safe in the bundle and the store: checkpoints go, the sweep counts it."""
    from experiments.training import clear_checkpoints

    clear_checkpoints(job.checkpoint_folder)
    if job.ctx.sweep_run_id:
        callbacks.sweep_progress(job.tracker, job.ctx.sweep_run_id)
    _log_done(job, result, score, t_logging)


def _seeds_tag(seeds: list[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}"


def _finished_before(job: Job) -> tuple[str, float] | None:
    """(run id, test_acc_mean) of a FINISHED job with this config and seeds, if there is one."""
    seeds = _seeds_tag(job.seeds)
    flt = where(**{Tag.KIND: Kind.JOB, Tag.CONFIG_HASH: job.config_hash, Tag.SEEDS: seeds},
                status="FINISHED")  # fmt: skip
    for run in job.tracker.find_runs(flt, max_results=20):
        metrics = metrics_v2(run.data.metrics, run.data.tags.get(Tag.FORMAT))
        if int(metrics.get(STATS["n_replicas"], -1)) == len(job.seeds):
            return run.info.run_id, float(metrics.get(TEST_ACC_MEAN, math.nan))
    return None


def _job_tags(job: Job) -> dict[str, str]:
    """Provenance and place of the job: the tags of its job run and of its replica runs."""
    import torch

    from experiments import provenance

    tags = {
        **provenance.run_tags(job.ctx.study, job.ctx.overrides),
        Tag.CONFIG_HASH: job.config_hash,
        Tag.TORCH_THREADS: str(torch.get_num_threads()),
        Tag.SEEDS: _seeds_tag(job.seeds),
    }
    if job.ctx.sweep_run_id:
        tags[Tag.SWEEP_RUN_ID] = job.ctx.sweep_run_id
    if job.ctx.job_num is not None:
        tags[Tag.JOB_NUM] = str(job.ctx.job_num)
    return tags


def _output_dir(ctx: JobContext) -> Path:
    """The job's output folder: Hydra's, else a new one under runs/jobs (calls outside Hydra)."""
    if ctx.output_dir:
        return Path(ctx.output_dir)
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return repo_root() / "runs" / "jobs" / f"{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


def _start(job: Job) -> Any:
    """The job's bundle (state training) and its RUNNING job run, which the bundle records."""
    from experiments import provenance
    from experiments.bundle import Bundle
    from experiments.tracking import now_ms
    from experiments.upload import job_run_tags

    tags = _job_tags(job)
    bundle = Bundle.create(
        _output_dir(job.ctx),
        OmegaConf.to_yaml(job.cfg, resolve=True),
        tracking_uri=job.tracker.uri,
        experiment=job.cfg.tracking.experiment,
        name=job.name,
        tags=tags,
        seeds=job.seeds,
        start_ms=now_ms(),
        sweep_run_id=job.ctx.sweep_run_id,
    )
    provenance.write_files(bundle.path / Artifact.PROVENANCE)  # the git diff of a dirty tree
    run_id = job.tracker.start_run(
        job.name,
        {**tags, **job_run_tags(bundle), Tag.KIND: Kind.JOB},
        parent_run_id=job.ctx.sweep_run_id,
        start_time=bundle.manifest["start_ms"],
        heartbeat=True,
    )
    bundle.update(job_run_id=run_id)
    params, cfg_tags = split_config(flatten(job.cfg))
    job.tracker.log_batch(run_id, params=params, tags=cfg_tags)
    log.info(
        "MLflow: %s, experiment %r, job run %s; training %d replicas (seeds %s); bundle %s",
        job.tracker.uri,
        job.cfg.tracking.experiment,
        run_id,
        len(job.seeds),
        _seeds_tag(job.seeds),
        bundle.path,
    )
    if job.tracker.uri.startswith(("http://", "https://")) and job.ctx.job_num in (None, 0):
        from experiments.ui_views import runs_url

        log.info(
            "MLflow UI, the jobs view: %s", runs_url(job.tracker.uri, job.tracker.experiment_id)
        )
    return bundle


def _train(job: Job, bundle: Any) -> Any:
    """Train the replicas (resuming from a checkpoint of an earlier attempt if there is one),
    sending the mean curves to the job run as they grow. In a group of jobs that differ only in
    the learning rate (hydra/launcher=lr_groups), the first job to train trains the others'
    replicas with its own, and they take their results from disk (experiments/lr_groups.py)."""
    from experiments.live import LiveSender
    from experiments.training import LiveCurves, eval_epochs_for, train_replicas
    from experiments.upload import sizes_of

    trained = _trained_by_partner(job)
    if trained is not None:
        return trained
    partners = _group_partners(job)
    seeds, spec = _batch_of(job, partners)
    label = f"job #{job.ctx.job_num}" if job.ctx.job_num is not None else job.ctx.study
    label += f" (+ jobs {', '.join(f'#{p.ctx.job_num}' for p in partners)})" if partners else ""
    bar = Progress(job.spec.epochs, label, job.cfg.trainer.progress)
    epochs = eval_epochs_for(job.spec.epochs, job.spec.eval_every).tolist()
    live = LiveCurves.create(len(seeds), len(epochs))
    own = LiveCurves(live.metrics[:, : len(job.seeds)], live.done[: len(job.seeds)])
    sender = LiveSender(job.tracker.client, bundle.manifest["job_run_id"], own, epochs,
                        sizes_of(job.cfg), job.cfg.tracking.live_every_s)  # fmt: skip

    def progress(epoch: int) -> None:
        bar(epoch)
        sender.start()  # here: after the workers were forked

    try:
        result = train_replicas(
            seeds, spec=spec, progress=progress, checkpoint=_checkpointing(job), live=live
        )
    finally:
        sender.stop()
        bar.close()
    if partners:
        result = _hand_over(job, partners, result, bundle.manifest["job_run_id"])
    result.timings["live"] = sender.seconds
    return result


def _trained_by_partner(job: Job) -> Any:
    """The job's results, if the leader of its lr group trained them (else None)."""
    from experiments.training import fingerprint, load_trained

    result = load_trained(job.checkpoint_folder, fingerprint(job.seeds, job.spec))
    if result is not None:
        log.info("trained already, together with other jobs: %s", result.trained_with)
    return result


def _group_partners(job: Job) -> list[Job]:
    """The other jobs of this job's lr group to train with it (none outside hydra/launcher=
    lr_groups), in the group's order."""
    from experiments import lr_groups

    members = [m for m in lr_groups.members() if m.num != job.ctx.job_num]
    return [p for p in (_partner(job, m.num, m.cfg) for m in members) if p is not None]


def _partner(job: Job, num: int, cfg: DictConfig) -> Job | None:
    """Job `num` as a partner of `job`, if its settings differ from the job's only in the
    learning rate, it is not FINISHED in the store and it has no checkpoint or trained results
    of its own. One whose config is refused is left to fail as its own job."""
    from dataclasses import replace

    from experiments.config import ConfigError

    try:
        spec = validate(cfg)
    except ConfigError:
        return None
    if replace(spec, lr=job.spec.lr) != job.spec:
        return None
    other = Job(cfg, spec, replace(job.ctx, job_num=num), job.tracker, _seeds(cfg),
                config_hash(cfg), job.t_start)  # fmt: skip
    if any(other.checkpoint_folder.glob("*")):
        return None
    if not cfg.tracking.rerun and _finished_before(other) is not None:
        return None
    return other


def _batch_of(job: Job, partners: list[Job]) -> tuple[list[int], TrainSpec]:
    """The seeds and spec of one training of the job's replicas and its partners' (in order),
    each replica with its own job's learning rate."""
    if not partners:
        return job.seeds, job.spec
    from dataclasses import replace

    jobs = [job, *partners]
    rates = tuple(float(j.spec.lr) for j in jobs for _ in j.seeds)
    return [s for j in jobs for s in j.seeds], replace(job.spec, lr=rates)


def _hand_over(job: Job, partners: list[Job], result: Any, run_id: str) -> Any:
    """Each partner's replicas into its checkpoint folder (a failed write only costs it its own
    training later); returns this job's. Timings are split by replica."""
    from experiments.training import fingerprint, save_trained

    names = ", ".join(f"#{j.ctx.job_num}" for j in (job, *partners))
    result.trained_with = (
        f"jobs {names} in one batch of {len(result.seeds)} replicas, by job run {run_id}"
    )
    first = len(job.seeds)
    for p in partners:
        try:
            save_trained(p.checkpoint_folder, result.take(first, len(p.seeds)),
                         fingerprint(p.seeds, p.spec))  # fmt: skip
        except OSError as exc:
            log.warning("job #%s: cannot keep its trained results (%s); it will train them "
                        "itself.", p.ctx.job_num, exc)  # fmt: skip
        first += len(p.seeds)
    return result.take(0, len(job.seeds))


def _checkpointing(job: Job) -> Any:
    """Where and how often the job's shards save their state (None: trainer.checkpoint_every=0)."""
    from experiments.training import Checkpointing

    every = job.cfg.trainer.checkpoint_every
    return Checkpointing(job.checkpoint_folder, every) if every > 0 else None


def _save(job: Job, bundle: Any, result: Any, t_train: float) -> float:
    """The trained results into the bundle (before any store sees them); returns the score."""
    from experiments.records import final_test_acc_mean
    from experiments.tracking import now_ms

    t_saved = time.perf_counter()
    timings = {  # seconds by part: time/<part>_s on the job run
        "startup": t_train - job.t_start,
        "train": result.timings.get("train", math.nan),
        "eval": result.timings.get("eval", math.nan),
        "data": result.timings.get("data", math.nan),
        "training_wall": t_saved - t_train,
        "live": result.timings.get("live", 0.0),  # sending the growing curves, in a thread
    }
    score = final_test_acc_mean(result, job.spec.n_test)
    bundle.update(logged_ms=now_ms())
    timings["total"] = time.perf_counter() - job.t_start  # the upload adds its own
    bundle.save_result(result, timings, score)
    return score


def _explain_failure(exc: BaseException, bundle: Any) -> None:
    """Remember where the job's results are, for the message of a store failure."""
    if isinstance(exc, StoreUnavailable) and bundle is not None:
        exc.bundle = bundle.path  # type: ignore[attr-defined]
        exc.trained = bundle.state != "training"  # type: ignore[attr-defined]


def _log_done(job: Job, result: Any, score: float, t_logging: float) -> None:
    n_div = int(result.diverged.sum())
    log.info(
        "done: final test accuracy %.4f (mean of %d of %d replicas; %d diverged); train %.1f s "
        "(%s kernel), eval %.1f s, logging %.1f s",
        score,
        len(job.seeds) - n_div,
        len(job.seeds),
        n_div,
        result.timings.get("train", math.nan),
        result.kernel,
        result.timings.get("eval", math.nan),
        t_logging,
    )
