"""Stores the analysis cannot use: one paragraph and exit 2, never a traceback or a new store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis.__main__ import main
from analysis.store import HTTP_ENV, bounded_store_calls

FAST = ("--n-resamples", "1000", "--grid-resamples", "1000", "-q")


def _run(capfd, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def _one_paragraph(err: str) -> None:
    assert err.startswith("minitorch-analysis: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def _not_mlflow(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("make", "what"),
    [
        # No quote in the bytes: repr() would then write them b"..." (a 3% flake before).
        (
            lambda p: p.write_bytes(os.urandom(4096).replace(b"'", b"?")),
            "is not a SQLite database (it starts b'",
        ),
        (lambda p: p.write_text("runs: 110\n"), "is not a SQLite database (it starts b'runs: 11"),
        (lambda p: p.write_bytes(b""), "is an empty file, so no MLflow runs can be read"),
        (_not_mlflow, "is a SQLite database without MLflow's tables (no alembic_version"),
    ],
    ids=["random-bytes", "text", "empty", "other-sqlite"],
)
def test_a_file_that_is_not_a_store_is_left_untouched(tmp_path: Path, capfd, make, what) -> None:
    db = tmp_path / "mlflow.db"
    make(db)
    before = db.read_bytes()
    code, out, err = _run(capfd, "--tracking-uri", f"sqlite:///{db}", *FAST)
    assert code == 2 and out == ""
    _one_paragraph(err)
    assert f"the store sqlite:///{db} {what}" in err
    assert db.read_bytes() == before  # MLflow would have migrated the empty and foreign ones


def test_damaged_table_pages_give_one_paragraph(store, capfd) -> None:
    store.study(seeds=2)
    db = store.root / "mlflow.db"
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tags'").fetchone()
    con.close()
    with db.open("r+b") as f:  # the schema still reads; the tags table does not
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    code, out, err = _run(capfd, "--tracking-uri", store.uri, *FAST)
    assert code == 2 and out == ""
    _one_paragraph(err)
    assert f"the MLflow store {store.uri} failed while reading the runs:" in err
    assert "database disk image is malformed. The file is damaged" in err


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A tmpfs mounted read-only under tmp_path, holding a copy of a file; skips if not root."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")

    def place(src: Path) -> Path:
        shutil.copyfile(src, mnt / src.name)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        return mnt / src.name

    try:
        yield place
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("how", ["mode=ro", "ro-mount"])
def test_read_only_store_writes_the_report_and_suggests_no_mlflow(
    store, tmp_path, capfd, no_figures, how, request, monkeypatch
) -> None:
    store.study(seeds=3)
    db = store.root / "mlflow.db"
    if how == "mode=ro":
        uri = f"sqlite:///file:{db}?mode=ro&uri=true"
        # MLflow makes the "parent folder" of such a URI, file:/..., relative to the cwd.
        monkeypatch.chdir(tmp_path)
    else:
        uri = f"sqlite:///{request.getfixturevalue('read_only_mount')(db)}"
    code, out, err = _run(capfd, "--tracking-uri", uri, "--out", str(tmp_path / "r"), *FAST)
    assert code == 2
    report = Path(out.rstrip().rsplit("report: ", 1)[1])
    assert "this study, report method  3" in out and report.is_file()
    _one_paragraph(err)
    assert f"the report was written to {report.parent}, but the MLflow store {uri} failed " in err
    assert "attempt to write a readonly database. The store is read-only here" in err
    assert "Re-run with --no-mlflow" in err
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["analysis"]["mlflow_run_id"] is None
    assert "readonly database" in summary["analysis"]["mlflow_error"]
    client = MlflowClient(store.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(exps, "tags.`mtl.kind` = 'analysis'") == []
    code, _, err = _run(capfd, "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-mlflow",
                        *FAST)  # fmt: skip
    assert code == 0 and err == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_within_seconds(capfd) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    code, out, err = _run(capfd, "--tracking-uri", uri, *FAST)
    assert time.monotonic() - t0 < 10
    assert code == 2 and out == ""
    _one_paragraph(err)
    assert f"the MLflow server {uri} does not answer ({uri}/health: " in err
    assert "Connection refused" in err and "mlflow server --host 127.0.0.1" in err


def test_http_retries_are_bounded_only_during_the_analysis(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own setting wins
    with bounded_store_calls():
        assert (
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
            == HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        )
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_experiment_name_mlflow_refuses(store, capfd) -> None:
    store.study(seeds=2)
    code, out, err = _run(capfd, "--tracking-uri", store.uri, "--experiment", "x" * 600, *FAST)
    assert code == 2 and out == ""
    _one_paragraph(err)
    assert "is 600 characters long; MLflow accepts experiment names of at most 500" in err
    assert "existing experiments: Default, report." in err and len(err) < 400


def test_unwritable_out_folder(store, tmp_path, capfd) -> None:
    store.study(seeds=2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = _run(capfd, "--tracking-uri", store.uri, "--out", str(blocker / "r"), *FAST)
    assert code == 2 and out == ""
    _one_paragraph(err)
    assert f"cannot write the report to {blocker / 'r'}" in err and "--out DIR" in err
