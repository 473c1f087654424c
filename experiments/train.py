"""The Hydra app: `python -m experiments.train [experiment=report|grid|quick] [key=value ...]`.

Composes the config and runs the task, `experiments.job.run`: it checks the config, prints it,
trains `replicas` seeds together, logs one MLflow run per replica under a job run (under a
sweep run in a multirun), and returns the final mean test accuracy for sweepers. Bad values end
with one message and exit code 2, before any data or MLflow run exists; a store that cannot be
written with exit code 3, the results kept in the job's bundle.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import hydra
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra_plugins.minitorch_lab.lr_groups_launcher import LrGroupsLauncher
from omegaconf.errors import OmegaConfBaseException

from experiments import callbacks, signals
from experiments.config import ConfigError
from experiments.errors import StoreUnavailable
from experiments.job import JobContext, Progress, hydra_job_context, run

__all__ = ["JobContext", "Progress", "hydra_job_context", "main", "run"]

EXIT_CONFIG = 2
EXIT_STORE = 3  # the store could not be written; the results are in the job's bundle
# An absolute path: a relative one would be read as a Python package path (pkg://conf).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# The task function is `run` itself, defined in experiments.job: launchers (joblib, submitit)
# pickle it by reference, which a function of this file, run as __main__, would not allow.
# (Its job name stays "train": hydra.job.name in conf/config.yaml.)
hydra_app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(run)
# hydra/launcher=lr_groups (experiments/lr_groups.py). Hydra finds plugins by scanning the
# hydra_plugins folders on sys.path, which misses an editable install's: register it here.
Plugins.instance().register(LrGroupsLauncher)


def main() -> None:
    """Console entry point: the Hydra app, with config errors as one message and exit code 2."""
    user_full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra would print its own trace for any exception; let them through and sort them here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    signals.install()
    try:
        hydra_app()
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
    finally:
        _freeze_heap_before_exit()


def _freeze_heap_before_exit() -> None:
    """Spare the interpreter's exit its garbage collections over the whole heap.

    Python's finalization collects garbage several times over every object still alive; with
    torch, MLflow and SQLAlchemy loaded (~350k objects) that is most of the exit's cost
    (`perf` on `python -c "import torch"`: ~55% of its 1.4 s exit in the collector, most of the
    rest torch unregistering its operators). What is alive now lives until the process ends,
    so `gc.freeze` marks it permanent and those collections skip it. Measured from a quick
    job's last log line to the process's end: 3.0 s without, 0.8 s with (median of 6, a busy
    2-core machine). All else of a normal exit still happens, in its order: non-daemon threads
    are joined, atexit handlers run, logs and files are flushed.
    """
    gc.freeze()


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


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


if __name__ == "__main__":
    main()
