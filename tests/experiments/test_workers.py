"""Worker processes of train_replicas(workers=2) die with their parent and stop when it stops.

Real processes: a script trains with two workers for far longer than the test waits, and is
killed (-9) or signalled mid-training; its forked worker must be gone within seconds.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments.spec import TrainSpec
from experiments.training import train_replicas

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Trains 4 replicas on two processes "forever". In mode "waiting" the parent's own replicas
# diverge at once, so that it sits in the wait for the worker's result when signalled. On
# leaving train_replicas it prints the children it still has (none: killed and reaped).
SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from experiments.spec import TrainSpec
    from experiments.training import train_replicas

    marker, mode = Path(sys.argv[1]), sys.argv[2]
    def on_term(signum, frame):
        raise SystemExit(143)  # as an app that ends its runs on SIGTERM, then exits 143
    signal.signal(signal.SIGTERM, on_term)
    def ready(epoch):
        if not marker.exists():
            marker.write_text(str(epoch))
    lr = [1e4, 1e4, 0.01, 0.01] if mode == "waiting" else 0.01
    try:
        spec = TrainSpec(workers=2, epochs=10**6, eval_every=1, n_train=200, n_test=50, lr=lr)
        train_replicas([0, 1, 2, 3], spec, progress=ready)
    finally:
        print(json.dumps(children(os.getpid())), flush=True)
    """
)


def children(pid: int) -> list[list]:
    """[pid, state] of the processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid:
            found.append([int(entry.name), state])
    return found


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture
def leftovers():
    """Pids to SIGKILL after the test, so that a failing test leaves no training process."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_training(
    tmp_path: Path, mode: str, leftovers: list[int]
) -> tuple[subprocess.Popen, list[int]]:
    """The script, once it trains (first evaluation done), and its worker's pid."""
    script = tmp_path / "train_forever.py"
    script.write_text(inspect.getsource(children) + SCRIPT)
    marker = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    leftovers.append(proc.pid)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the script did not start training (rc {proc.returncode}):\n{err}")
        time.sleep(0.05)
    workers = [pid for pid, state in children(proc.pid) if state not in "ZX"]
    leftovers.extend(workers)
    assert len(workers) == 1, children(proc.pid)
    return proc, workers


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until none of pids runs; fails after timeout."""
    t = time.monotonic()
    while any(alive(p) for p in pids):
        assert time.monotonic() - t < timeout, f"still running after {timeout} s: {pids}"
        time.sleep(0.02)
    return time.monotonic() - t


def test_worker_dies_when_its_parent_is_killed_with_sigkill(tmp_path, leftovers):
    proc, workers = start_training(tmp_path, "own", leftovers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)  # not communicate(): a surviving worker would hold the pipes open
    assert proc.returncode == -signal.SIGKILL
    wait_gone(workers, timeout=5)


@pytest.mark.parametrize("mode", ["own", "waiting"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_the_parent_stops_the_workers_at_once(tmp_path, sig, mode, leftovers):
    proc, workers = start_training(tmp_path, mode, leftovers)
    t = time.monotonic()
    os.kill(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the parent did not exit within 30 s of signal {sig.name}")
    took = time.monotonic() - t
    # SIGTERM: the script's handler raises SystemExit(143); SIGINT: Python's KeyboardInterrupt,
    # which ends the interpreter by SIGINT.
    expected = 143 if sig == signal.SIGTERM else -signal.SIGINT
    assert proc.returncode == expected, err
    assert took < 10, f"the parent took {took:.1f} s to exit"
    # When the exception left train_replicas, the worker was already killed and reaped.
    assert json.loads(out.strip().splitlines()[-1]) == [], err
    assert not any(alive(p) for p in workers)


def test_an_exception_in_the_parent_kills_the_worker_without_waiting():
    before = {pid for pid, _ in children(os.getpid())}

    def fail(epoch: int) -> None:
        if epoch == 3:
            raise RuntimeError("stop here")

    t = time.monotonic()
    with pytest.raises(RuntimeError, match="stop here"):
        # The worker's shard alone would train for half a minute.
        spec = TrainSpec(workers=2, epochs=20_000, eval_every=1, n_train=1000, n_test=50)
        train_replicas([0, 1, 2, 3], spec, progress=fail)
    assert time.monotonic() - t < 10
    assert [c for c in children(os.getpid()) if c[0] not in before] == []


def test_die_with_parent_kills_a_child_whose_parent_is_already_gone():
    # The child passes a pid that is not its parent's, as when the parent died before prctl.
    code = "import os; from experiments.processes import die_with_parent; "
    code += "die_with_parent(os.getppid() + 1); print('survived')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout
