"""MLflow side of the harness: where the store is, the run hierarchy, and batched logging.

Runs: [sweep] -> job -> replica (one per seed); what each holds: experiments/records.py, README.
Everything goes through `MlflowClient` with explicit run ids (no fluent global state), and
every run this process opens is closed: FINISHED, FAILED (tag mtl.error) or KILLED.

Speed, per store (benchmarks/tracking.py measures all three on the report study):
- A server (http://, any backend): the replica runs are created, filled (log_batch, at most
  1,000 metrics a call) and ended by `SERVER_WORKERS` threads through MLflow's public client
  (`Tracker.parallel`: the first error is raised in the caller as it was raised, the rest is
  cancelled). A server's cost is its per-value inserts (~0.3 ms each).
- sqlite: MLflow's `log_batch` builds one ORM object per value (~5,700 values/s here), which
  made the report's 110 x 1,604 curve points a 31 s affair. The replica runs and their metrics
  and params are therefore written in bulk through the store's own engine and tables (~100,000
  values/s): the one private fast path, in experiments/sqlite_fast.py, each write one
  transaction, compared with MLflow's own writes by tests/experiments/test_logging.py and
  tests/experiments/test_tracking_speed.py, and mlflow is bounded in pyproject.toml to the
  versions those tests ran on. Any other store, or any surprise in the schema, takes the
  public API.

On every store a replica's curves go into its metric history at the resolution a chart needs:
at most `history_points` per curve, chosen to draw it within `history_tolerance` of its range
(`curve_points`; the first and last point always included). curves.csv keeps every point, and
the analysis reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import heapq
import itertools
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from experiments import provenance, sqlite_fast
from experiments.config import ConfigError
from experiments.errors import StoreUnavailable
from experiments.record_format import VERSION, Tag

log = logging.getLogger(__name__)


class _NoStoreTraceback(logging.Filter):
    """MLflow logs a full traceback for every sqlite error (a lock, a full disk) and then raises
    it; `retry` reports it in one line, or waits it out, so the traceback is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


logging.getLogger("mlflow.store.db.utils").addFilter(_NoStoreTraceback())

MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
# Threads for the replica runs against a server ($MTL_STORE_THREADS overrides); MLflow's HTTP
# pool keeps 10 connections a host.
SERVER_WORKERS = 8
# A replica run's curves in the metric history (each value costs a server ~0.3 ms): at most
# this many points per curve (tracking.history_points; 0: every point), those that draw it
# within this fraction of its range (tracking.history_tolerance); see `curve_points`.
# MLflow's UI draws at most 320 points a line.
HISTORY_POINTS = 51
HISTORY_TOLERANCE = 0.01
PARALLEL_GRACE_S = 15.0  # how long a failed or interrupted `parallel` waits for its running calls
T = TypeVar("T")
_worker = threading.local()  # .stop: the Event that cancels this worker thread's retries


# ---------------------------------------------------------------- where the store is


def resolve_uri(configured: str | None) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<repo>/runs/mlflow.db
    (experiments/provenance.py). A relative sqlite path is made absolute (from the working
    directory)."""
    uri = provenance.tracking_uri(configured)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            uri = f"sqlite:///{Path.cwd() / path}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a sqlite store, artifacts go next to it: <db dir>/mlartifacts/<experiment>
    (<repo>/runs/mlartifacts for the default store). A server decides for itself (None)."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts" / safe_name(experiment)).as_uri()


def safe_name(name: str) -> str:
    """A folder name for an experiment: its characters that are safe in paths, at most 100
    (a longer name keeps a hash of the whole, so two long names stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
    if len(safe) > 100:
        safe = f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return safe


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail early and clearly (ConfigError) when the store cannot be used, before any training."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"tracking.uri={uri!r}: the MLflow server does not answer ({url}: {reason}; "
                f"waited {timeout:g} s), so nothing was trained. Start it, e.g. `mlflow server "
                f"--host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$PWD/runs/server.db "
                f"--workers 1`, or point tracking.uri (or MLFLOW_TRACKING_URI) at a running server "
                f"or at a sqlite:///<absolute path>.db store."
            ) from None
        return
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"tracking.uri={uri!r}: cannot create the folder of the sqlite store ({exc}); "
                f"accepted: sqlite:///<absolute path to a writable file>.db or an http(s):// "
                f"server."
            ) from None
        return
    scheme = uri.split(":", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        raise ConfigError(
            f"tracking.uri={uri!r} is a file store, which MLflow 3 no longer accepts for runs; "
            f"accepted: sqlite:///<absolute path>.db (the default is "
            f"{provenance.default_tracking_uri()}) or an http(s):// tracking server."
        )


# ---------------------------------------------------------------- small helpers


# Faults worth waiting out (a parallel writer's lock, a server restarting) and faults that
# will not pass by waiting (a full disk, a read-only or damaged file).
_TRANSIENT = ("database is locked", "database table is locked", "failed with exception",
              "connection refused", "max retries exceeded", "response code 5", "timed out",
              "temporarily unavailable", "connection aborted", "connection reset",
              "remote end closed")  # fmt: skip
_FATAL = ("database or disk is full", "disk i/o error", "readonly database", "read-only file",
          "unable to open database", "file is not a database", "disk image is malformed",
          "no space left")  # fmt: skip
DEFAULT_RETRY_S = 60.0


def store_fault(exc: BaseException) -> str | None:
    """ "transient", "fatal" or None (not a fault of the store) for an exception it raised."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if any(s in text for s in _FATAL) or isinstance(exc, OSError) and exc.errno == 28:
        return "fatal"
    if any(s in text for s in _TRANSIENT) or isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def retry(
    fn: Callable[..., T],
    *args: Any,
    retry_s: float = DEFAULT_RETRY_S,
    uri: str = "",
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> T:
    """Call fn; wait out transient store faults for at most `retry_s` seconds in all, then (or
    at once for a fatal fault such as a full disk) raise StoreUnavailable. Once `stop` is set
    (a `Tracker.parallel` that gave up), a fault is raised as it is, without waiting."""
    deadline = time.monotonic() + retry_s
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            fault = store_fault(exc)
            if fault is None or stop is not None and stop.is_set():
                raise
            left = deadline - time.monotonic()
            if fault == "fatal" or left <= 0:
                waited = "" if fault == "fatal" else f" (retried for {retry_s:g} s)"
                raise StoreUnavailable(uri or "in use", _first_line(exc) + waited) from exc
            delay = min(0.2 * 2**attempt, 5.0, left) * (1 + random.random()) / 2
            log.warning("MLflow store busy (%s); retry %d in %.1f s", _first_line(exc),
                        attempt + 1, delay)  # fmt: skip
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise
    raise AssertionError("unreachable")


def http_retries_bounded(retry_s: float) -> None:
    """MLflow's own HTTP retries (7, backoff 2: minutes) off, unless the user set them: our
    `retry` waits out a server that is down, within tracking.retry_s."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # MLflow prints "View run ... at: <url>" for every run ended on a server: 110 lines a job.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(5, min(60, int(retry_s)))))


def open_client(uri: str) -> MlflowClient:
    """A client whose store is ready: a fresh sqlite file is created and migrated once, under a
    file lock, however many processes start on it at the same moment (MLflow's own schema
    set-up races and can leave the file unusable)."""
    db = _sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    try:
        lock = open(db.with_name(db.name + ".lock"), "a+")  # noqa: SIM115  (closed below)
    except OSError:  # a read-only folder: nobody can create a store there anyway
        return MlflowClient(tracking_uri=uri)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MlflowClient(tracking_uri=uri)  # makes the store (schema), cached per URI


def ensure_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    """The id of experiment `name`, created (or restored) if needed; safe under races."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
            add_views(client, experiment_id, {})
            return experiment_id
        except MlflowException as exc:
            exp = client.get_experiment_by_name(name)  # a parallel job created it first?
            if exp is None:
                raise ConfigError(
                    f"tracking.experiment={name[:80]!r}{'...' if len(name) > 80 else ''} "
                    f"(length {len(name)}) was refused by MLflow: {exc.message.splitlines()[0]} "
                    f"Accepted: a name MLflow takes, e.g. letters, digits and -_. of at most "
                    f"a few hundred characters."
                ) from None
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    add_views(client, exp.experiment_id, exp.tags)
    return exp.experiment_id


def add_views(client: MlflowClient, experiment_id: str, tags: dict[str, str] | None) -> None:
    """The UI's ready-made views (experiments/ui_views.py), unless the experiment has them (a
    view the user changed is left alone)."""
    from experiments.ui_views import view_tags

    try:
        for key, value in view_tags().items():
            if key not in (tags or {}):
                client.set_experiment_tag(experiment_id, key, value)
    except Exception as exc:  # a read-only store, say: the views are a convenience
        log.debug("the UI's views were not added to experiment %s: %s", experiment_id, exc)


def now_ms() -> int:
    return int(time.time() * 1000)


HEARTBEAT_S = 60.0  # how often a job or sweep run says its process is alive (mtl.heartbeat)


# ---------------------------------------------------------------- runs


class Tracker:
    """One MLflow experiment in one store, and the runs this process has open in it.

    Every store call goes through `call`: transient faults are retried for at most `retry_s`
    seconds; after that, or at once for a full disk or a read-only store, StoreUnavailable is
    raised, and every later call raises it at once (so ending runs on the way out cannot wait
    a second time).
    """

    def __init__(self, uri: str, experiment: str, retry_s: float = DEFAULT_RETRY_S) -> None:
        from experiments.reaper import process_tags

        self.uri, self.retry_s = uri, retry_s
        self.down: str | None = None  # why the store was given up on
        http_retries_bounded(retry_s)
        self.client = self.call(open_client, uri)
        self.experiment_id = self.call(
            ensure_experiment, self.client, experiment, artifact_location(uri, experiment)
        )
        self.process_tags = process_tags()
        server = _sqlite_path(uri) is None
        # Threads for many runs at once (`parallel`): a server overlaps requests; sqlite takes
        # one writer at a time and has its bulk path.
        self.workers = int(os.environ.get("MTL_STORE_THREADS", SERVER_WORKERS)) if server else 1
        # Points per curve in a replica's metric history (None: all) and how close they draw
        # it: see the module doc; set from tracking.history_* by the upload.
        self.history_points: int | None = HISTORY_POINTS
        self.history_tolerance = HISTORY_TOLERANCE
        self._runs_lock = threading.Lock()  # open_runs and _beating, changed from threads
        self.open_runs: list[str] = []
        self.artifact_uris: dict[str, str] = {}  # of the runs this tracker created
        self._beating: list[str] = []  # open sweep/job runs that get a heartbeat
        self._stop_beat = threading.Event()
        self._beat: threading.Thread | None = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) against the store, within the retry budget."""
        if self.down is not None:
            raise StoreUnavailable(self.uri, self.down)
        stop = getattr(_worker, "stop", None)
        try:
            return retry(fn, *args, retry_s=self.retry_s, uri=self.uri, stop=stop, **kwargs)
        except StoreUnavailable as exc:
            self.down = exc.reason
            raise

    def parallel(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """[fn(item) for item in items], on up to `workers` threads (in this thread for one
        worker or one item); results in the order of the items.

        The first error in a worker is raised here as it was raised there (StoreUnavailable
        stays StoreUnavailable, with the worker's traceback); the items not started are then
        cancelled and the running ones stop retrying, and are waited for at most
        `PARALLEL_GRACE_S` (each is one store call). The same happens when this thread is
        interrupted (Ctrl-C, or `Stopped` from SIGTERM): no worker outlives the call by more
        than its current request."""
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        cancel = threading.Event()

        def run(item: Any) -> T:
            if cancel.is_set():
                raise _Cancelled
            _worker.stop = cancel
            try:
                return fn(item)
            finally:
                _worker.stop = None

        pool = ThreadPoolExecutor(min(self.workers, len(items)), thread_name_prefix="mtl-store")
        futures = [pool.submit(run, item) for item in items]
        try:
            # In short waits, so that an interrupt is taken at once however it arrives.
            while wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION).not_done:
                if any(f.done() and not f.cancelled() and f.exception() for f in futures):
                    break
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [future.result() for future in futures]
        finally:
            cancel.set()
            for future in futures:
                future.cancel()
            pool.shutdown(wait=False)
            running = [f for f in futures if not f.done()]
            if running:
                wait(running, timeout=PARALLEL_GRACE_S)

    def find_runs(self, filter_string: str, max_results: int = 50_000) -> list[Any]:
        """Active runs of this experiment matching the filter, newest first (all pages)."""
        out: list[Any] = []
        token = None
        while len(out) < max_results:
            page = self.call(
                self.client.search_runs,
                [self.experiment_id],
                filter_string,
                max_results=min(10_000, max_results - len(out)),
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token:
                break
        return out

    def start_run(
        self,
        name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        start_time: int | None = None,
        heartbeat: bool = False,
    ) -> str:
        """Create a RUNNING run with its tags; its id is remembered until it is ended."""
        run = self.call(
            self.client.create_run,
            self.experiment_id,
            start_time=start_time,
            tags=_run_tags({**self.process_tags, **tags}, parent_run_id),
            run_name=name[:250],
        )
        self._opened(run.info.run_id, run.info.artifact_uri, heartbeat)
        return run.info.run_id

    def reopen(self, run_id: str, heartbeat: bool = False) -> None:
        """Set an ended run RUNNING again, owned by this process (a resumed sweep)."""
        tags = {**self.process_tags, Tag.ERROR: ""}
        self.log_batch(run_id, tags=tags)
        self.call(self.client.update_run, run_id, status="RUNNING")
        self._opened(run_id, self.call(self.client.get_run, run_id).info.artifact_uri, heartbeat)

    def _opened(self, run_id: str, artifact_uri: str, heartbeat: bool) -> None:
        with self._runs_lock:
            self.open_runs.append(run_id)
            self.artifact_uris[run_id] = artifact_uri
            if not heartbeat:
                return
            self._beating.append(run_id)
            if self._beat is None:
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()

    def _heartbeat(self) -> None:
        """Tell readers on other hosts that this process still owns its runs (reaper.py)."""
        while not self._stop_beat.wait(HEARTBEAT_S):
            for run_id in list(self._beating):
                with contextlib.suppress(Exception):  # a missed beat is not an error
                    self.client.set_tag(run_id, Tag.HEARTBEAT, str(now_ms()))

    def start_runs(
        self,
        runs: list[tuple[str, Mapping[str, str]]],
        parent_run_id: str | None = None,
        start_time: int | None = None,
    ) -> list[str]:
        """`start_run` for many (name, tags) at once: one transaction on sqlite, `workers`
        threads on a server. Run i starts at start_time + i ms, so the runs sort in the order
        given (seed order), not at random."""
        runs = [(name, {**self.process_tags, **tags}) for name, tags in runs]
        start = start_time if start_time is not None else now_ms()
        if self.uri.startswith("sqlite:"):
            try:
                created = sqlite_fast.create_runs(
                    self,
                    [(name[:250], _run_tags(tags, parent_run_id)) for name, tags in runs],
                    start,
                )
            except sqlite_fast.NoFastPath as exc:
                log.info("bulk run creation not available (%s); creating one by one", exc)
            else:
                for run_id, artifact_uri in created:
                    self._opened(run_id, artifact_uri, False)
                return [run_id for run_id, _ in created]
        return self.parallel(
            lambda item: self.start_run(item[1][0], item[1][1], parent_run_id, start + item[0]),
            enumerate(runs),
        )

    def artifact_repo(self, run_id: str) -> ArtifactRepository:
        """The artifact store of a run this tracker created: no tracking-store query, so it
        can be used from a forked process (which must not share the store's connections)."""
        if run_id not in self.artifact_uris:
            self.artifact_uris[run_id] = self.call(self.client.get_run, run_id).info.artifact_uri
        return get_artifact_repository(self.artifact_uris[run_id], tracking_uri=self.uri)

    def end_run(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            self.call(self.client.set_tag, run_id, Tag.ERROR, error[:5000])
        self.call(self.client.set_terminated, run_id, status)
        self._closed([run_id])

    def _closed(self, run_ids: list[str]) -> None:
        done = set(run_ids)
        with self._runs_lock:
            self.open_runs = [r for r in self.open_runs if r not in done]
            self._beating = [r for r in self._beating if r not in done]
            if not self._beating:
                self._stop_beat.set()

    def end_runs(self, run_ids: list[str], status: str = "FINISHED") -> None:
        """`end_run` for many runs at once: one UPDATE on sqlite, `workers` threads on a
        server."""
        if self.uri.startswith("sqlite:") and run_ids:
            try:
                self.call(sqlite_fast.end_runs, self.client, run_ids, status, now_ms())
            except sqlite_fast.NoFastPath as exc:
                log.info("bulk run ending not available (%s); ending one by one", exc)
            else:
                self._closed(run_ids)
                return
        self.parallel(lambda run_id: self.end_run(run_id, status), run_ids)

    def end_all(self, status: str, error: str | None = None) -> None:
        """End every run still open (newest first); never raises: it runs on the error path."""
        for run_id in reversed(list(self.open_runs)):
            try:
                self.end_run(run_id, status, error)
            except Exception as exc:  # the store itself may be the problem
                log.error("could not mark run %s %s: %s", run_id, status, _first_line(exc))
                self._closed([run_id])

    def log_batch(
        self,
        run_id: str,
        metrics: list[Metric] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Metrics, params and tags in as few log_batch calls as MLflow's limits allow."""
        for batch in _batches(run_id, metrics, params, tags):
            self._send(batch)

    def _send(self, batch: tuple[str, list[Metric], list[Param], list[RunTag]]) -> None:
        run_id, m, p, t = batch
        self.call(self.client.log_batch, run_id, metrics=m, params=p, tags=t)

    def bulk_log(self, runs: Mapping[str, tuple[list[Metric], Mapping[str, str]]]) -> bool:
        """Metrics and params of many runs, idempotently (a value already stored is not stored
        twice): bulk insert on sqlite, log_batch elsewhere (on `workers` threads, each call
        one run's batch of at most 1,000 metrics). Returns whether the bulk path ran."""
        if self.uri.startswith("sqlite:"):
            try:
                sqlite_fast.bulk_insert(self, runs)
                return True
            except sqlite_fast.NoFastPath as exc:
                log.info("bulk insert not available (%s); using log_batch", exc)
        batches = [b for run_id, (m, p) in runs.items() for b in _batches(run_id, m, p)]
        self.parallel(self._send, batches)
        return False


class _Cancelled(Exception):
    """A `Tracker.parallel` item not started because the call had already failed."""


def _batches(
    run_id: str,
    metrics: list[Metric] | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[tuple[str, list[Metric], list[Param], list[RunTag]]]:
    """One run's values as log_batch calls within MLflow's limits (1,000 metrics, 100 params,
    100 tags a call)."""
    metrics = list(metrics or [])
    plist = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    tlist = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
    out = []
    while metrics or plist or tlist:
        m, metrics = metrics[:MAX_METRICS_PER_BATCH], metrics[MAX_METRICS_PER_BATCH:]
        p, plist = plist[:MAX_PARAMS_PER_BATCH], plist[MAX_PARAMS_PER_BATCH:]
        t, tlist = tlist[:MAX_TAGS_PER_BATCH], tlist[MAX_TAGS_PER_BATCH:]
        out.append((run_id, m, p, t))
    return out


def curve_points(
    steps: Sequence[float], values: Sequence[float], points: int, tolerance: float
) -> list[int]:
    """The indices of at most `points` values that draw the curve (steps, values) as a line
    within `tolerance` x its range of the full curve, wherever possible (greedy Douglas-Peucker:
    the first and last point, then again and again the point farthest above or below the line
    drawn so far). A chart 300 pixels high draws tolerance 0.01 within 3 pixels. Non-finite
    values (a diverged replica) are drawn as gaps: where each starts and ends is kept too."""
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    n = len(y)
    if n <= points:
        return list(range(n))
    finite = np.isfinite(y)
    edges = np.flatnonzero(finite[1:] != finite[:-1])
    kept = sorted({0, n - 1, *edges.tolist(), *(edges + 1).tolist()})
    span = float(np.ptp(y[finite])) if finite.any() else 0.0
    limit = tolerance * span

    def farthest(a: int, b: int) -> tuple[float, int, int, int]:
        if b - a < 2 or not finite[a]:  # no point between, or a gap: nothing to draw
            return (0.0, a, b, -1)
        line = y[a] + (y[b] - y[a]) * (x[a + 1 : b] - x[a]) / (x[b] - x[a])
        off = np.abs(y[a + 1 : b] - line)
        i = int(np.argmax(off))
        return (-float(off[i]), a, b, a + 1 + i)

    heap = [farthest(a, b) for a, b in itertools.pairwise(kept)]
    heapq.heapify(heap)
    chosen = set(kept)
    while heap and len(chosen) < points:
        off, a, b, i = heapq.heappop(heap)
        if i < 0 or -off <= limit:
            break
        chosen.add(i)
        heapq.heappush(heap, farthest(a, i))
        heapq.heappush(heap, farthest(i, b))
    return sorted(chosen)


def _run_tags(tags: Mapping[str, str], parent_run_id: str | None) -> dict[str, str]:
    """A run's tags as the harness writes them: the caller's, plus MLflow's system tags."""
    tags = {Tag.FORMAT: VERSION, **tags}
    tags.setdefault("mlflow.user", _user())
    tags.setdefault("mlflow.source.name", "experiments.train")
    tags.setdefault("mlflow.source.type", "LOCAL")
    if parent_run_id:
        tags[Tag.PARENT_RUN_ID] = parent_run_id
    return {k: str(v)[:8000] for k, v in tags.items()}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
