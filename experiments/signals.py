"""SIGTERM and SIGINT as an exception, so a stopped job ends its runs and its workers.

SLURM sends SIGTERM at preemption and time-out, Ctrl-C sends SIGINT. Python's default for
SIGTERM kills the process on the spot: MLflow runs stay RUNNING and worker processes run on.
`install` turns both into `Stopped` (a KeyboardInterrupt, so every handler of Ctrl-C also
handles SIGTERM), raised in the main thread; the app then ends its runs KILLED, stops its
workers and exits 128 + the signal number (143, 130). Later signals are noted, not raised, so
the clean-up itself is not interrupted (SLURM follows with SIGKILL if it takes too long).

In a SLURM job started by submitit (`hydra/launcher=slurm`) the app's `main` does not run:
submitit's process loads the pickled task (which imports this module), then sets its own
handlers: SIGTERM "bypassed" (only logged) and USR2 (`signal_delay_s` before the time limit,
or at preemption) to checkpoint the call and requeue the job. With SIGTERM bypassed, a
`scancel` or the time limit left the task to be killed by SIGKILL KillWait seconds later,
its runs RUNNING. So, in a submitit job, importing this module makes submitit's
`JobEnvironment._handle_signals` (its hook for per-cluster signal handling) call `install`
right after its own set-up, and `install` takes submitit's signals over:

- SIGTERM (scancel, the time limit itself) raises Stopped: the runs end KILLED;
- USR2 still runs submitit's handler (checkpoint, `scontrol requeue`); when it requeues, its
  exit becomes Stopped (runs KILLED, "requeued"); when it does not (time-outs exhausted:
  `hydra.launcher.max_num_timeout`), its UncompletedJobError goes on, runs end FAILED with
  its reason, and the launcher reports it. A SIGTERM that follows is only noted.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SUBMITIT_JOB_ENV = "SUBMITIT_FOLDER"  # set by submitit's process_job before it loads the task


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.detail = detail
        super().__init__(f"stopped by {self.signame}" + (f": {detail}" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by submitit and Hydra
        return (type(self), (self.signum, self.detail))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Stopped(signum)


def _submitit_usr_signal() -> int | None:
    """In a submitit job: the signal submitit's requeue handler is on (USR2), else None."""
    if SUBMITIT_JOB_ENV not in os.environ:
        return None
    env_module = sys.modules.get("submitit.core.job_environment")
    if env_module is None:
        return None
    try:
        return int(env_module.JobEnvironment._usr_sig())
    except Exception:
        return None


def _wrap_requeue(original: Callable[[int, FrameType | None], Any]) -> Callable:
    """submitit's USR2 handler, run once; its exit after a requeue raised as Stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        if len(_received) > 1:
            return  # already stopping: let the clean-up finish
        try:
            original(signum, frame)
        except SystemExit as exc:  # submitit requeued the job, then exits
            raise Stopped(
                signum, "SLURM time limit or preemption; submitit requeued the job"
            ) from exc
        except BaseException:  # e.g. UncompletedJobError: not requeued
            raise
        _received.remove(signum)  # nothing done (not the job's first task): not a stop

    handler.mtl_wraps = original  # type: ignore[attr-defined]
    return handler


def install() -> bool:
    """Raise Stopped on SIGTERM and SIGINT (main thread only); returns whether installed.
    In a submitit job, also wraps submitit's USR2 handler (see the module's doc)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    _received.clear()
    usr = _submitit_usr_signal()
    if usr is not None:
        current = signal.getsignal(usr)
        if callable(current) and not hasattr(current, "mtl_wraps"):
            signal.signal(usr, _wrap_requeue(current))
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return True


def _adapt_submitit() -> bool:
    """In a submitit job, have submitit's signal set-up end with `install` (see above)."""
    if SUBMITIT_JOB_ENV not in os.environ:
        return False
    env_module = sys.modules.get("submitit.core.job_environment")
    if env_module is None:
        return False
    cls = env_module.JobEnvironment
    original = cls._handle_signals
    if getattr(original, "mtl_installs", False):
        return True

    @functools.wraps(original)
    def _handle_signals(self: Any, paths: Any, submission: Any) -> None:
        original(self, paths, submission)
        install()

    _handle_signals.mtl_installs = True  # type: ignore[attr-defined]
    cls._handle_signals = _handle_signals
    return True


_adapt_submitit()


def reason(exc: BaseException) -> str:
    """The text for a run's mtl.error tag when `exc` stopped it."""
    if isinstance(exc, Stopped):
        text = f"stopped by {exc.signame} (signal {exc.signum})"
        return f"{text}: {exc.detail}" if exc.detail else text
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if type(exc).__name__ == "UncompletedJobError" and "timed-out" in str(exc):
        return (
            f"the SLURM job reached its time limit (hydra.launcher.timeout_min): "
            f"{type(exc).__name__}: {exc}"
        )
    return f"{type(exc).__name__}: {exc}"


def exit_code(exc: BaseException) -> int:
    """128 + the signal number for Stopped, 130 for a plain KeyboardInterrupt."""
    return exc.exit_code if isinstance(exc, Stopped) else 130
