"""Child processes that never outlive the process that started them.

A forked worker that outlives its parent (parent killed by `kill -9`, or stopped by a signal
while the worker trains on) holds hundreds of MB and the store open, with nobody to read its
result. `die_with_parent` makes the kernel kill such a child; `kill_pool` stops a pool's
workers at once when the parent gives up on them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """In a child: have the kernel SIGKILL it when its parent `parent_pid` dies (Linux only).

    Returns whether the kernel will; elsewhere a no-op that returns False. The signal comes
    when the parent's forking thread ends, so fork from a thread that lives as long as the child
    is needed (the main thread, or the caller's, in a `with` block).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"die_with_parent: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    # The parent may have died between fork and prctl: the child is then already re-parented and
    # no signal will come, so do what the kernel would have done.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def init_worker(parent_pid: int) -> None:
    """Initializer of a forked pool worker: dies with its parent and leaves signals to it.

    A forked child inherits the parent's Python signal handlers (which may end the parent's
    MLflow runs): SIGTERM is reset to its default, and SIGINT (Ctrl-C reaches the whole process
    group) ignored, since the parent stops its workers itself when interrupted.
    """
    die_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """SIGKILL a pool's worker processes now, cancel what has not started, and reap them."""
    # The workers are in _processes (Python 3.8-3.14; 3.14 adds kill_workers() for this).
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.join(timeout=5)  # SIGKILL cannot be caught: this reaps at once, leaving no zombie
