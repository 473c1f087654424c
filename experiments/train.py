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
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TextIO  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from experiments import callbacks  # noqa: E402
from experiments.config import ConfigError, config_hash, flatten, validate  # noqa: E402

# torch, MLflow and the training loop are imported in `run`, after the config is checked:
# a refused config then costs a fraction of a second instead of seconds of imports.

log = logging.getLogger("experiments.train")
EXIT_CONFIG = 2
# An absolute path: a relative one would be read as a Python package path (pkg://conf).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXIT_INTERRUPTED = 130


@dataclass
class JobContext:
    """Where a job sits: its preset, its overrides, and the sweep it belongs to."""

    study: str = "custom"
    overrides: list[str] = field(default_factory=list)
    sweep_run_id: str | None = None
    job_num: int | None = None


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


def replica_yaml_writer(cfg: DictConfig) -> Callable[[int], str]:
    """config.yaml of a replica: the resolved config as that seed alone (replicas: 1)."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))

    def write(seed: int) -> str:
        resolved.seed = seed
        resolved.replicas = 1
        header = (
            f"# Replica with seed {seed}; the same model alone: "
            f"python -m experiments.train seed={seed} replicas=1 ... (values below)\n"
        )
        return header + OmegaConf.to_yaml(resolved)

    return write


def run(cfg: DictConfig, context: JobContext | None = None) -> float:
    """Check, train, log; returns the final mean test accuracy over non-diverged replicas."""
    t_start = _take_start_time()
    validate(cfg)  # before any data, thread setting or MLflow run
    import torch
    from mlflow.entities import Metric

    from experiments.records import curves_of, final_test_acc_mean, job_metrics, log_replicas
    from experiments.tracking import (
        Tracker,
        check_tracking_uri,
        command_line,
        git_info,
        now_ms,
        resolve_uri,
    )
    from experiments.training import train_replicas

    ctx = context or hydra_job_context()
    uri = resolve_uri(cfg.tracking.uri)
    check_tracking_uri(uri, cfg.tracking.server_timeout_s)
    torch.set_num_threads(cfg.trainer.threads)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True).rstrip())

    tracker = Tracker(uri, cfg.tracking.experiment)
    seeds = [cfg.seed + r for r in range(cfg.replicas)]
    flat = flatten(cfg)
    sha, dirty = git_info()
    tags = {
        "mtl.study": ctx.study,
        "mtl.git_commit": sha,
        "mtl.git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": sha,
        "mtl.command": command_line(ctx.overrides),
        "mtl.overrides": " ".join(ctx.overrides),
        "mtl.config_hash": config_hash(cfg),
        "mtl.torch_threads": str(torch.get_num_threads()),
    }
    if ctx.sweep_run_id:
        tags["mtl.sweep_run_id"] = ctx.sweep_run_id
    if ctx.job_num is not None:
        tags["mtl.job_num"] = str(ctx.job_num)
    name = " ".join(ctx.overrides) or "defaults"
    if ctx.job_num is not None:
        name = f"#{ctx.job_num} {name}"
    start_ms = now_ms()
    job_run_id = tracker.start_run(
        name,
        {**tags, "mtl.kind": "job", "mtl.seeds": f"{seeds[0]}..{seeds[-1]}"},
        parent_run_id=ctx.sweep_run_id,
        start_time=start_ms,
    )
    try:
        tracker.log_batch(job_run_id, params={k: v for k, v in flat.items() if k != "seed"})
        log.info(
            "MLflow: %s, experiment %r, job run %s; training %d replicas (seeds %d..%d)",
            uri,
            cfg.tracking.experiment,
            job_run_id,
            len(seeds),
            seeds[0],
            seeds[-1],
        )
        t_train = time.perf_counter()
        label = f"job #{ctx.job_num}" if ctx.job_num is not None else ctx.study
        progress = Progress(cfg.trainer.epochs, label, cfg.trainer.progress)
        result = train_replicas(
            seeds,
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
        )
        progress.close()
        t_logging = time.perf_counter()
        split = log_replicas(
            tracker,
            result,
            params=flat,
            tags=tags,
            job_run_id=job_run_id,
            replica_yaml=replica_yaml_writer(cfg),
            start_time=start_ms,
            figures=cfg.tracking.replica_figures,
            weights=cfg.tracking.replica_weights,
            dpi=cfg.tracking.figure_dpi,
        )
        metrics = job_metrics(curves_of(result), result)
        t_end = time.perf_counter()
        times = {
            "time_startup_s": t_train - t_start,
            "time_train_s": result.timings.get("train", math.nan),
            "time_eval_s": result.timings.get("eval", math.nan),
            "time_data_s": result.timings.get("data", math.nan),
            "time_training_wall_s": t_logging - t_train,
            "time_logging_s": t_end - t_logging,
            "time_total_s": t_end - t_start,
        }
        times.update({f"time_logging_{k}_s": v for k, v in split.items() if k != "bulk"})
        last = int(result.eval_epochs[-1])
        metrics += [Metric(k, float(v), now_ms(), last) for k, v in times.items()]
        tracker.log_batch(job_run_id, metrics, tags={"mtl.bulk_insert": str(bool(split["bulk"]))})
        tracker.client.log_text(job_run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracker.end_run(job_run_id, "FINISHED")
    except KeyboardInterrupt:
        tracker.end_all("KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        tracker.end_all("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    score = final_test_acc_mean(result)
    n_div = int(result.diverged.sum())
    log.info(
        "done: final test accuracy %.4f (mean of %d of %d replicas; %d diverged); train %.1f s, "
        "eval %.1f s, logging %.1f s, start-up %.1f s",
        score,
        len(seeds) - n_div,
        len(seeds),
        n_div,
        times["time_train_s"],
        times["time_eval_s"],
        times["time_logging_s"],
        times["time_startup_s"],
    )
    return score


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    """The Hydra task function (what launchers run in each job)."""
    return run(cfg)


def main() -> None:
    """Console entry point: the Hydra app, with config errors as one message and exit code 2."""
    user_full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra would print its own trace for any exception; let them through and sort them here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_app()
        _exit_without_teardown(0)
    except KeyboardInterrupt:
        callbacks.end_active_sweep("KILLED", "interrupted (KeyboardInterrupt)")
        print("\nInterrupted; any open MLflow runs were ended KILLED.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
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
