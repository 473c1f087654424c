"""SIGTERM and SIGINT as an exception, so a stopped job ends its runs and its workers.

SLURM sends SIGTERM at preemption and time-out, Ctrl-C sends SIGINT. Python's default for
SIGTERM kills the process on the spot: MLflow runs stay RUNNING and worker processes run on.
`install` turns both into `Stopped` (a KeyboardInterrupt, so every handler of Ctrl-C also
handles SIGTERM), raised in the main thread; the app then ends its runs KILLED, stops its
workers and exits 128 + the signal number (143, 130). Later signals are noted, not raised, so
the clean-up itself is not interrupted (SLURM follows with SIGKILL if it takes too long).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Stopped(signum)


def install() -> bool:
    """Raise Stopped on SIGTERM and SIGINT (main thread only); returns whether installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    _received.clear()
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return True


def reason(exc: BaseException) -> str:
    """The text for a run's mtl.error tag when `exc` stopped it."""
    if isinstance(exc, Stopped):
        return f"stopped by {exc.signame} (signal {exc.signum})"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return f"{type(exc).__name__}: {exc}"


def exit_code(exc: BaseException) -> int:
    """128 + the signal number for Stopped, 130 for a plain KeyboardInterrupt."""
    return exc.exit_code if isinstance(exc, Stopped) else 130
