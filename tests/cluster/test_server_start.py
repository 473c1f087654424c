"""An `mlflow server` that exits at once fails its start at once, with its output (the
PostgreSQL case the cluster set-up met: plain postgresql:// picks the psycopg 3 driver)."""

from __future__ import annotations

import time

import pytest

from tests.experiments.procs import MlflowServer, ServerExited


@pytest.mark.server
def test_a_server_that_exits_is_not_waited_on(tmp_path):
    server = MlflowServer(tmp_path, backend_uri="postgresql://u:p@127.0.0.1:9/none")
    started = time.monotonic()
    try:
        with pytest.raises(ServerExited) as info:
            server.start(timeout=300)
    finally:
        server.stop()
    assert time.monotonic() - started < 120  # its exit, not the 300 s health time-out
    assert "exited with code" in str(info.value)
    assert "psycopg" in str(info.value)  # its output: why it exited
