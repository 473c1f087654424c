"""Reach the MLflow store safely: refuse what is not a store, fail fast when it cannot be reached.

Every store failure the analysis meets becomes one ``AnalysisError`` paragraph that names the
tracking URI, what failed and what would work; nothing here creates or migrates a store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from analysis.errors import AnalysisError
from experiments.provenance import repo_root as repo_root  # re-exported for the analysis
from experiments.provenance import tracking_uri

SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = ("alembic_version", "experiments", "runs", "tags")
MAX_EXPERIMENT_NAME = 500  # MLflow's MAX_EXPERIMENT_NAME_LENGTH
HEALTH_TIMEOUT_S = 5.0
# MLflow's defaults (7 retries, backoff factor 2, 120 s per request) keep a dead server busy
# for minutes; these bound it to ~1 min at worst. Values the user set win.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
# MLflow logs a full traceback for every sqlite OperationalError before raising it.
_NOISY_LOGGERS = ("mlflow.store.db.utils", "alembic")


def store_errors() -> tuple[type[BaseException], ...]:
    """The exception types a store call raises when the store, not the analysis, is at fault."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError, requests.RequestException, OSError, sqlite3.Error)


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (also ``sqlite:///file:<path>?mode=ro&uri=true``)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri.removeprefix("sqlite:///")
    if rest.startswith("file:"):
        return Path(unquote(urlparse(rest).path))
    return Path(rest.split("?", 1)[0])


def local_artifact(artifact_uri: str, name: str) -> Path | None:
    """The artifact's path when the store keeps artifacts on this file system, else None."""
    if artifact_uri.startswith("file://"):
        return Path(unquote(urlparse(artifact_uri).path)) / name
    if artifact_uri.startswith("/"):
        return Path(artifact_uri) / name
    return None


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the repo's sqlite store; checked (see below).

    A sqlite file must exist and be an MLflow store (MLflow would silently create or migrate
    one); a server must answer /health within a few seconds.
    """
    uri = tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(path, uri)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    return uri


def check_sqlite_store(path: Path, uri: str) -> None:
    """Raise unless ``path`` is an existing SQLite file with MLflow's tables (opened read-only)."""
    if not path.is_file():
        raise AnalysisError(
            f"no MLflow store at {path} (tracking URI {uri}). Run a study first, e.g. "
            "`python -m experiments.train experiment=report`, or point --tracking-uri "
            "(or MLFLOW_TRACKING_URI) at an existing store such as sqlite:///<abs path>.db "
            "or http://127.0.0.1:5000."
        )
    with path.open("rb") as f:
        head = f.read(len(SQLITE_HEADER))
    what = None
    if head != SQLITE_HEADER:
        what = "an empty file" if not head else f"not a SQLite database (it starts {head[:8]!r})"
    else:
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
            ) as con:
                rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                missing = set(MLFLOW_TABLES) - {r[0] for r in rows}
        except sqlite3.Error as e:
            what = f"a damaged SQLite database ({e})"
        else:
            if missing:
                gone = ", ".join(sorted(missing))
                what = f"a SQLite database without MLflow's tables (no {gone})"
    if what:
        raise AnalysisError(
            f"the store {uri} is {what}, so no MLflow runs can be read from it; it was left "
            "untouched. Point --tracking-uri (or MLFLOW_TRACKING_URI) at the store the runs were "
            "logged to, e.g. sqlite:///<repo>/runs/mlflow.db, or restore this file from a backup."
        )


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise unless the server behind ``uri`` answers at all within ``timeout`` seconds."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answers; MLflow's own requests will say what is wrong, if anything
    except OSError as e:  # URLError, refused connections and timeouts are all OSErrors
        reason = getattr(e, "reason", e)
        raise AnalysisError(
            f"the MLflow server {uri} does not answer ({url}: {reason}; waited at most "
            f"{timeout:g} s). Start it, e.g. `mlflow server --host 127.0.0.1 --port 5000 "
            "--backend-store-uri sqlite:///$PWD/runs/server.db --workers 1`, or point "
            "--tracking-uri (or MLFLOW_TRACKING_URI) at a running server or a sqlite:///<abs "
            "path>.db store."
        ) from None


def store_error(uri: str, exc: BaseException, doing: str) -> AnalysisError:
    """One paragraph for a store failure: the URI, the first line of the cause, what to try."""
    text = str(getattr(exc, "message", exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("(raised")]
    first = (lines[0] if lines else type(exc).__name__)[:300]
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        hint = "The store is read-only here (file mode, a read-only mount, or ?mode=ro)."
    elif "not a database" in low or "malformed" in low:
        hint = "The file is damaged; restore it, or point --tracking-uri at another store."
    elif "schema" in low and "upgrade" in low:
        hint = f"Upgrade the store once with `mlflow db upgrade {uri}` (back it up first)."
    elif "connection" in low or "max retries" in low or "timed out" in low:
        hint = "The server stopped answering; check it is running and reachable, then retry."
    else:
        hint = "Check --tracking-uri (or MLFLOW_TRACKING_URI) and that the store is usable."
    return AnalysisError(f"the MLflow store {uri} failed while {doing}: {first}. {hint}")


@contextlib.contextmanager
def bounded_store_calls() -> Iterator[None]:
    """Within: MLflow's HTTP retries bounded (HTTP_ENV) and its store tracebacks not logged."""
    saved_env = {k: os.environ.get(k) for k in HTTP_ENV}
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    saved_levels = [lg.level for lg in loggers]
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)
