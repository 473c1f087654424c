"""A real one-node SLURM cluster (with accounting) and an MLflow server on PostgreSQL, set up
once per session by .ci/cluster/setup.sh and stopped by it (by PID) at the end.

Most of the cluster tests' time is waiting (the set-up ~20 s, apt installs ~45-65 s on a fresh
machine, a job's 1-minute time limit, submitit's polling), so: as soon as collection shows that
a `cluster` test will run, the set-up starts in the background, and once it is up, so do the
sweeps the tests only check afterwards (BACKGROUND_SWEEPS); the `cluster` tests are moved to
the end of the session. In a full run all of it overlaps the other tests. `.ci/run` starts the
installs earlier still (`setup.sh install`), and `setup.sh start` waits for them. Under
pytest-xdist only the worker gw0 sets the cluster up, and tests/conftest.py sends it the
`cluster` tests (one group); the other workers collect them but never run them.

Needs root on Debian (apt-get, daemons, /etc/slurm). Elsewhere the tests skip, with the
reason, except in CI (CI=true), where they must run and fail instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CLUSTER_WORKER, is_cluster_worker, xdist_worker
from tests.experiments.procs import App, free_port

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / ".ci" / "cluster" / "setup.sh"
START_TIMEOUT_S = 420  # includes waiting for the packages' install (apt) on a fresh machine
# CPUs the cluster hands out: more than the machine's 2, so the tests' jobs run at once.
SLURM_CPUS = 6


def unavailable() -> str | None:
    """Why the cluster cannot be set up here, or None."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (apt-get install, SLURM and database daemons, /etc/slurm)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "needs Debian's packages (no apt-get, no slurmctld)"
    return None


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"cluster tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def slurm_args(uri: str, partition: str, tmp: Path, experiment: str, *extra: str) -> list[str]:
    """A quick multirun on the cluster (1 CPU per job, its own MLflow experiment)."""
    return [
        "-m",
        "experiment=quick",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={partition}",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        "trainer.threads=1",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "tracking.replica_figures=false",
        "trainer.progress=false",
        f"trainer.checkpoint_dir={tmp}/checkpoints",
        *extra,
    ]


# Sweeps started as soon as the cluster is up; test_slurm.py checks them (name: experiment, args).
BACKGROUND_SWEEPS = {
    # 2 jobs x 2 replicas, to finish: the run tree, curves, artifacts, then the analysis.
    "sweep": ("cl_sweep", ["optim.lr=0.01,0.03", "replicas=2", "trainer.epochs=10"]),
    # A job that cannot finish within its 1-minute limit. No USR2 warning (signal_delay_s=0):
    # SLURM's own time-out. At nice 19 (the sbatch script renices itself and
    # PropagatePrioProcess passes it on), so that its spinning minute slows nothing else.
    "time_limit": ("cl_time_limit", ["trainer.epochs=100000000", "trainer.eval_every=10000000",
                   "trainer.checkpoint_every=0", "hydra.launcher.timeout_min=1",
                   "hydra.launcher.signal_delay_s=0",
                   "hydra.launcher.setup=['renice -n 19 $$']"]),
}  # fmt: skip


class Cluster:
    """`setup.sh start STATE` in the background, then the background sweeps; `stop`."""

    def __init__(self) -> None:
        # Not under pytest's tmp dirs (0700): the mysql user needs to reach its data dir.
        self.state = Path(tempfile.mkdtemp(prefix="mtl-cluster-"))
        self.state.chmod(0o755)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.state / "setup.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self.error: str | None = None  # why the set-up failed
        self.env: dict[str, str] = {}
        self.sweeps: dict[str, tuple[App, Path, float]] = {}
        self.stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._bring_up, name="cluster-setup", daemon=True)

    def start(self) -> None:
        atexit.register(self.stop)
        self._thread.start()

    def _bring_up(self) -> None:
        env = {**os.environ, "MTL_MLFLOW_PORT": str(self.port), "MTL_PYTHON": sys.executable,
               "MTL_SLURM_CPUS": str(SLURM_CPUS)}  # fmt: skip
        with self._lock:
            if self.stopped:
                return
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen(
                    ["bash", str(SETUP), "start", str(self.state)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
        try:
            code = self.proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.error = f"cluster not up in {START_TIMEOUT_S} s:\n{self.output()}"
            return
        if code != 0:
            self.error = f"{SETUP.relative_to(REPO)} start failed ({code}):\n{self.output()}"
            return
        for line in (self.state / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            self.env[key] = value
        self.ready_after_s = self.elapsed()
        with self._lock:
            if self.stopped:
                return
            for name, (experiment, extra) in BACKGROUND_SWEEPS.items():
                tmp = self.state / "sweeps" / name
                tmp.mkdir(parents=True)
                args = slurm_args(self.uri, self.partition, tmp, experiment, *extra)
                self.sweeps[name] = (App(tmp, *args), tmp, time.monotonic())

    def wait(self) -> None:
        """Until the cluster is up (fails, or skips outside CI, if it cannot be)."""
        self._thread.join(timeout=START_TIMEOUT_S + 30)
        if self.error is None and self.ready_after_s is None:
            self.error = f"cluster not up in {START_TIMEOUT_S} s:\n{self.output()}"
        if self.error is not None:
            cannot_run(self.error)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def output(self) -> str:
        try:
            return self.log.read_text()[-5000:]
        except OSError:
            return ""

    @property
    def partition(self) -> str:
        return self.env["MTL_PARTITION"]

    def stop(self, keep_state: bool = False) -> None:
        """Stop the sweeps and every daemon started (setup.sh stop, by their PIDs); once.
        The state folder (logs, databases) is removed unless `keep_state`."""
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
        for app, _, _ in self.sweeps.values():
            app.kill_all()
        if self.proc is not None and self.proc.poll() is None:  # still starting: end it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own clean-up stops the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if self.proc is not None:
            with open(self.log, "a") as log:
                subprocess.run(
                    ["bash", str(SETUP), "stop", str(self.state)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=180,
                    check=False,
                )
        if keep_state:
            print(f"\ncluster state (logs, sweeps) kept in {self.state}", file=sys.stderr)
        else:
            shutil.rmtree(self.state, ignore_errors=True)
        atexit.unregister(self.stop)

    def slurm(self, *cmd: str, timeout: float = 30) -> str:
        """A SLURM command's output (squeue, sacct, scancel, scontrol ...)."""
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{shlex.join(cmd)}: {proc.stderr}"
        return proc.stdout


_cluster: Cluster | None = None


def _start_cluster() -> Cluster:
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
        _cluster.start()
    return _cluster


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Cluster tests last, and their cluster and sweeps started now, in the background."""
    marked = [item for item in items if item.get_closest_marker("cluster")]
    if not marked:
        return
    items[:] = [item for item in items if not item.get_closest_marker("cluster")] + marked
    # Under xdist every worker collects every test, but only CLUSTER_WORKER runs these.
    if not config.option.collectonly and unavailable() is None and is_cluster_worker():
        _start_cluster()


def pytest_sessionfinish(session, exitstatus) -> None:
    if _cluster is not None:
        _cluster.stop(keep_state=exitstatus != 0)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The running cluster (set up once per session, stopped at the session's end)."""
    reason = unavailable()
    if reason is not None:
        cannot_run(reason)
    if not is_cluster_worker():
        pytest.fail(
            f"cluster test on xdist worker {xdist_worker()}: only {CLUSTER_WORKER} sets the "
            "cluster up; run with --dist loadgroup (the default with -n here), which sends the "
            "cluster tests there",
            pytrace=False,
        )
    running = _start_cluster()
    running.wait()
    return running
