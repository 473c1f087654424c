"""experiments/signals.py in a submitit job, without a cluster: taking over submitit's
handlers, the requeue's exit as Stopped, and the exceptions crossing submitit's pickles.
(tests/cluster/test_slurm.py shows the same on a real SLURM cluster.)"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

from experiments import signals

USR2 = signal.SIGUSR2


@pytest.fixture(autouse=True)
def _clean_received():
    signals._received.clear()
    yield
    signals._received.clear()


def test_stopped_survives_pickling_with_its_detail():
    exc = pickle.loads(pickle.dumps(signals.Stopped(USR2, "requeued")))
    assert isinstance(exc, signals.Stopped) and exc.signum == USR2 and exc.detail == "requeued"
    assert signals.reason(exc) == "stopped by SIGUSR2 (signal 12): requeued"
    plain = pickle.loads(pickle.dumps(signals.Stopped(signal.SIGTERM)))
    assert signals.reason(plain) == "stopped by SIGTERM (signal 15)"
    assert plain.exit_code == 143


def test_the_requeue_exit_becomes_stopped():
    def requeue(signum, frame):  # submitit's handler after `scontrol requeue`
        sys.exit(-1)

    with pytest.raises(signals.Stopped, match="requeued") as info:
        signals._wrap_requeue(requeue)(USR2, None)
    assert info.value.signum == USR2
    # A SIGTERM during the clean-up that follows is noted, not raised.
    signals._handler(signal.SIGTERM, None)
    assert signals._received == [USR2, signal.SIGTERM]


def test_no_requeue_lets_submitits_error_through_and_a_no_op_is_not_a_stop():
    class UncompletedJobError(RuntimeError):  # submitit's, by name
        pass

    def not_requeued(signum, frame):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    with pytest.raises(UncompletedJobError) as info:
        signals._wrap_requeue(not_requeued)(USR2, None)
    assert signals.reason(info.value).startswith("the SLURM job reached its time limit")
    signals._received.clear()
    signals._wrap_requeue(lambda signum, frame: None)(USR2, None)  # not the first task
    assert signals._received == []
    with pytest.raises(signals.Stopped):  # so a later SIGTERM still stops the job
        signals._handler(signal.SIGTERM, None)


def test_in_a_submitit_job_our_handlers_win_over_submitits():
    """In a process set up as submitit's process_job does it (SUBMITIT_FOLDER, the task's
    modules imported, then JobEnvironment._handle_signals), SIGTERM raises Stopped instead of
    being bypassed, and USR2 runs submitit's handler through ours."""
    code = textwrap.dedent(
        """
        import os, signal
        from submitit.core import job_environment as je
        import experiments.signals as s  # what unpickling the task imports
        class Env(je.JobEnvironment):
            _env = {"job_id": "X", "num_tasks": "X", "num_nodes": "X", "node": "X",
                    "global_rank": "X", "local_rank": "X"}
        Env.__new__ = lambda cls, *a: object.__new__(cls)
        Env()._handle_signals(None, None)
        usr = signal.getsignal(signal.SIGUSR2)
        print("usr2 wraps submitit:", type(usr.mtl_wraps.__self__).__name__)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except s.Stopped as exc:
            print("SIGTERM:", s.reason(exc))
        """
    )
    env = {**os.environ, signals.SUBMITIT_JOB_ENV: "/nonexistent"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "usr2 wraps submitit: SignalHandler" in proc.stdout
    assert "SIGTERM: stopped by SIGTERM (signal 15)" in proc.stdout
    assert "Bypassing" not in proc.stderr
