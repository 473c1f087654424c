"""Real processes for fault-injection tests: the app in the background, an `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.experiments.conftest import REPO, app_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a process started with start_new_session and all it
    forked), zombies excluded."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


class App:
    """`python -m experiments.train ...` in its own session; output collected in a file."""

    def __init__(self, tmp_path: Path, *args: str, log_name: str = "app.log") -> None:
        self.log_path = tmp_path / log_name
        env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                app_args(tmp_path, *args),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, count: int = 1, timeout: float = 180) -> None:
        """Until `text` appears `count` times in the output (fails if the app ends first)."""
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            assert self.proc.poll() is None, f"app ended before {text!r}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output}"
            time.sleep(0.05)

    def wait_until(self, predicate, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"app ended early:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"condition not met in {timeout} s"
            time.sleep(0.05)

    def finish(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_all(self) -> None:
        """Clean-up: whatever is left of the session."""
        for pid in session_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class ServerExited(AssertionError):
    """The server process ended while it was being waited for."""


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite store (or `backend_uri`); can be stopped and
    started again on the same port and store. Stopped by its process group. With
    `serve_artifacts`, the server stores and serves the artifacts itself (clients get
    `mlflow-artifacts:` URIs) in root/art."""

    def __init__(
        self, root: Path, *, backend_uri: str | None = None, serve_artifacts: bool = False
    ) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{root}/srv.db"
        self.serve_artifacts = serve_artifacts
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.root / f"server{self.starts}.log"

    def start(self, timeout: float = 90) -> str:
        """Start the server and wait for /health; a server that exits meanwhile fails at once
        (ServerExited, with its output), not after `timeout`."""
        self.starts += 1
        log = open(self.log_path, "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--backend-store-uri", self.backend_uri,
               "--workers", "1"]  # fmt: skip
        if self.serve_artifacts:
            cmd += ["--serve-artifacts", "--artifacts-destination", str(self.root / "art")]
        else:
            cmd += ["--default-artifact-root", str(self.root / "art")]
        # Job execution off: the default server stalls on keep-alive requests.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            self._check_running()
            assert time.monotonic() < deadline, (
                f"mlflow server did not start in {timeout} s; its output:\n{self._output()}"
            )
            time.sleep(0.3)

    def _output(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return "(no output)"

    def _check_running(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise ServerExited(
                f"mlflow server exited with code {code} while starting "
                f"({' '.join(map(str, self.proc.args))}); its output:\n{self._output()}"
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
