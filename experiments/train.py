"""The Hydra app: `python -m experiments.train [experiment=report|grid|quick] [key=value ...]`.

Composes the config, checks it, prints it, trains `replicas` seeds together, logs one MLflow
run per replica under a job run (under a sweep run in a multirun), and returns the final mean
test accuracy for sweepers. Bad values end with one message and exit code 2, before any data
or MLflow run exists.
"""

from __future__ import annotations

import time

_T_IMPORT = time.perf_counter()  # start-up time is counted from here (imports are most of it)

import atexit  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TextIO  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from experiments import callbacks, signals  # noqa: E402
from experiments.config import (  # noqa: E402
    ConfigError,
    config_hash,
    flatten,
    repo_root,
    validate,
)
from experiments.errors import StoreUnavailable  # noqa: E402
from experiments.record_format import (  # noqa: E402
    STATS,
    TEST_ACC_MEAN,
    Kind,
    Tag,
    job_name,
    metrics_v2,
    split_config,
    where,
)

# torch, MLflow and the training loop are imported in `run`, after the config is checked:
# a refused config then costs a fraction of a second instead of seconds of imports.

log = logging.getLogger("experiments.train")
EXIT_CONFIG = 2
# An absolute path: a relative one would be read as a Python package path (pkg://conf).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXIT_STORE = 3  # the store could not be written; the results are in the job's bundle


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


def _take_start_time() -> float:
    """The first job of a process counts start-up from the import; later ones from their call."""
    global _T_IMPORT
    start, _T_IMPORT = _T_IMPORT, math.nan
    return start if start == start else time.perf_counter()


@dataclass
class Job:
    """One job's settings and the store it logs to, as `run` passes them between its steps."""

    cfg: DictConfig
    ctx: JobContext
    tracker: Any  # experiments.tracking.Tracker (MLflow is imported after the config check)
    seeds: list[int]
    config_hash: str
    t_start: float

    @property
    def name(self) -> str:
        """What the sweep varies (``j19 bs10 lr0.03 tanh-tanh-relu``), else the study's main
        settings (``report lr0.01 bs25 tanh-tanh-tanh x110``); see record_format."""
        if self.ctx.job_num is not None:
            given = dict(o.lstrip("+~").split("=", 1) for o in self.ctx.overrides if "=" in o)
            settings = {k: given[k] for k in self.ctx.swept if k in given}
        else:
            m = self.cfg.model
            settings = {"optim.lr": str(self.cfg.optim.lr),
                        "trainer.batch_size": str(self.cfg.trainer.batch_size),
                        "model.activations": ",".join(m.activations),
                        "replicas": str(self.cfg.replicas)}  # fmt: skip
        return job_name(settings, self.ctx.job_num, self.ctx.study)

    @property
    def checkpoint_folder(self) -> Path:
        """Where the same command finds this job's checkpoints again (not the dated Hydra dir)."""
        from experiments.tracking import safe_name

        exp = safe_name(self.cfg.tracking.experiment)
        key = f"{self.config_hash}-seed{self.seeds[0]}-n{len(self.seeds)}"
        return Path(self.cfg.trainer.checkpoint_dir) / exp / key


def _open_job(cfg: DictConfig, ctx: JobContext, t_start: float) -> Job:
    """The store checked and opened (dead runs in it reaped), the seeds and the config hash."""
    from experiments.reaper import reap
    from experiments.tracking import Tracker, check_tracking_uri, resolve_uri

    uri = resolve_uri(cfg.tracking.uri)
    check_tracking_uri(uri, cfg.tracking.server_timeout_s)
    tracker = Tracker(uri, cfg.tracking.experiment, cfg.tracking.retry_s)
    reap(tracker, say=log.info)
    seeds = [cfg.seed + r for r in range(cfg.replicas)]
    return Job(cfg, ctx, tracker, seeds, config_hash(cfg), t_start)


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
    sending the mean curves to the job run as they grow."""
    from experiments.live import LiveSender
    from experiments.training import Checkpointing, LiveCurves, eval_epochs_for, train_replicas
    from experiments.upload import sizes_of

    cfg = job.cfg
    label = f"job #{job.ctx.job_num}" if job.ctx.job_num is not None else job.ctx.study
    bar = Progress(cfg.trainer.epochs, label, cfg.trainer.progress)
    every = cfg.trainer.checkpoint_every
    epochs = eval_epochs_for(cfg.trainer.epochs, cfg.trainer.eval_every).tolist()
    live = LiveCurves.create(len(job.seeds), len(epochs))
    sender = LiveSender(job.tracker.client, bundle.manifest["job_run_id"], live, epochs,
                        sizes_of(cfg), cfg.tracking.live_every_s)  # fmt: skip

    def progress(epoch: int) -> None:
        bar(epoch)
        sender.start()  # here: after the workers were forked

    try:
        result = train_replicas(
            job.seeds,
            hidden=list(cfg.model.hidden),
            activations=list(cfg.model.activations),
            init=cfg.model.init,
            loss=cfg.model.loss,
            lr=cfg.optim.lr,
            batch_size=cfg.trainer.batch_size,
            epochs=cfg.trainer.epochs,
            eval_every=cfg.trainer.eval_every,
            n_train=cfg.data.n_train,
            n_test=cfg.data.n_test,
            encoding=cfg.data.encoding,
            workers=cfg.trainer.workers,
            progress=progress,
            checkpoint=Checkpointing(job.checkpoint_folder, every) if every > 0 else None,
            tanh_grad=cfg.model.tanh_grad,
            live=live,
        )
    finally:
        sender.stop()
        bar.close()
    result.timings["live"] = sender.seconds
    return result


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
    score = final_test_acc_mean(result, job.cfg.data.n_test)
    bundle.update(logged_ms=now_ms())
    timings["total"] = time.perf_counter() - job.t_start  # the upload adds its own
    bundle.save_result(result, timings, score)
    return score


def run(cfg: DictConfig, context: JobContext | None = None) -> float:
    """Check, train, log; returns the final mean test accuracy over non-diverged replicas."""
    t_start = _take_start_time()
    validate(cfg)  # before any data, thread setting or MLflow run
    import torch

    from experiments import signals
    from experiments.training import clear_checkpoints
    from experiments.upload import upload

    ctx = context or hydra_job_context()
    torch.set_num_threads(cfg.trainer.threads)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True).rstrip())
    job = _open_job(cfg, ctx, t_start)
    earlier = None if cfg.tracking.rerun else _finished_before(job)
    if earlier is not None:
        log.info(
            "already done: job run %s has FINISHED this config (hash %s) with seeds %s; its "
            "final test accuracy %.4f is returned. tracking.rerun=true trains it again.",
            earlier[0], job.config_hash, _seeds_tag(job.seeds), earlier[1],
        )  # fmt: skip
        return earlier[1]
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
    clear_checkpoints(job.checkpoint_folder)
    if ctx.sweep_run_id:
        callbacks.sweep_progress(job.tracker, ctx.sweep_run_id)
    _log_done(job, result, score, report.timings.get("logging", math.nan))
    return score


def _explain_failure(exc: BaseException, bundle: Any) -> None:
    """Remember where the job's results are, for the message of a store failure."""
    if isinstance(exc, StoreUnavailable) and bundle is not None:
        exc.bundle = bundle.path  # type: ignore[attr-defined]
        exc.trained = bundle.state != "training"  # type: ignore[attr-defined]


def store_failure_message(exc: StoreUnavailable) -> str:
    """One paragraph: what failed, what is kept where, and the command that finishes the job."""
    bundle = getattr(exc, "bundle", None)
    text = f"{exc}. "
    if bundle is not None and getattr(exc, "trained", False):
        text += (
            f"Nothing trained is lost: the results are in the bundle {bundle}. When the store "
            f"is back, `python -m experiments.sync {bundle}` fills it (add --tracking-uri URI "
            f"for another store)."
        )
    elif bundle is not None:
        text += (
            f"Training had not finished; run the same command again when the store is back to "
            f"resume from the last checkpoint (the job's bundle: {bundle})."
        )
    else:
        text += "Nothing was trained. Check the store (tracking.uri) and run the command again."
    return text


def _log_done(job: Job, result: Any, score: float, t_logging: float) -> None:
    n_div = int(result.diverged.sum())
    log.info(
        "done: final test accuracy %.4f (mean of %d of %d replicas; %d diverged); train %.1f s, "
        "eval %.1f s, logging %.1f s",
        score,
        len(job.seeds) - n_div,
        len(job.seeds),
        n_div,
        result.timings.get("train", math.nan),
        result.timings.get("eval", math.nan),
        t_logging,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    """The Hydra task function (what launchers run in each job)."""
    return run(cfg)


def main() -> None:
    """Console entry point: the Hydra app, with config errors as one message and exit code 2."""
    user_full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra would print its own trace for any exception; let them through and sort them here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    signals.install()
    try:
        hydra_app()
        _exit_without_teardown(0)
    except KeyboardInterrupt as exc:
        callbacks.end_active_sweep("KILLED", signals.reason(exc))
        print(
            f"\n{_capital(signals.reason(exc))}: open MLflow runs were ended KILLED and the "
            "workers stopped; run the same command again to resume (finished jobs are skipped, "
            "training continues from its last checkpoint).",
            file=sys.stderr,
        )
        sys.exit(signals.exit_code(exc))
    except StoreUnavailable as exc:
        callbacks.end_active_sweep("FAILED", str(exc))
        print(f"Error: {store_failure_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_STORE)
    except (ConfigError, HydraException, OmegaConfBaseException) as exc:
        callbacks.end_active_sweep("FAILED", f"{type(exc).__name__}: {exc}")
        if user_full_error:
            raise
        message = str(exc)
        if exc.__cause__ is not None and str(exc.__cause__) not in message:
            message += f"\n{exc.__cause__}"
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            callbacks.end_active_sweep("FAILED", f"{type(exc).__name__}: {exc}")
        raise


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _exit_without_teardown(code: int) -> None:
    """End the process now: the interpreter's own teardown of torch, MLflow and their ~3000
    modules takes 1-1.5 s here and does nothing a finished run needs. What Python's exit does
    first still runs, in its order: the threading exit hooks and the join of non-daemon threads
    (joblib's worker pool shuts down there), then the atexit handlers (multiprocessing,
    MLflow); logs and streams are flushed last. Falls back to a normal exit if those
    interpreter hooks are missing."""
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:
        sys.exit(code)
    shutdown()
    run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that launchers (joblib, submitit)
    # pickle the task function by reference; start-up time still counts from this file's import.
    from experiments import train as _app

    _app._T_IMPORT = _T_IMPORT
    _app.main()
