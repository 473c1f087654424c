"""The fast logging paths: the sqlite bulk insert against MLflow's own rows, one transaction;
`Tracker.parallel` (a server's thread pool) on errors and interrupts; the thinned history."""

from __future__ import annotations

import _thread
import sqlite3
import threading
import time

import numpy as np
import pytest
from mlflow.entities import Metric

from experiments.errors import StoreUnavailable
from experiments.sqlite_fast import bulk_insert
from experiments.tracking import Tracker, curve_points
from tests.experiments.conftest import sqlite_uri

TABLES = {
    "metrics": "key, value, timestamp, step, is_nan",
    "latest_metrics": "key, value, timestamp, step, is_nan",
    "params": "key, value",
}


def _values(ts: int) -> list[Metric]:
    """Values that exercise MLflow's rules: NaN, +-inf, a repeated value, steps out of order,
    two values at one step (the larger is the latest), and two keys."""
    out = [Metric("curves/a", v, ts, s) for s, v in enumerate([0.5, float("nan"), 2.0, 1e-300])]
    out += [Metric("curves/a", float("inf"), ts, 7), Metric("curves/a", -float("inf"), ts, 6)]
    out += [Metric("curves/a", 0.5, ts, 0)]  # the same value again: stored once
    out += [Metric("final/a", 3.0, ts, 9), Metric("final/a", 4.0, ts, 9)]
    out += [Metric("curves/b", float(i) / 3, ts + i, 10 * i) for i in range(1500)]
    return out


def _rows(db: str, run_id: str) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as con:
        return {
            table: sorted(
                con.execute(f"SELECT {cols} FROM {table} WHERE run_uuid = ?", (run_id,)),
                key=repr,
            )
            for table, cols in TABLES.items()
        }


def test_bulk_insert_writes_the_rows_mlflows_log_batch_writes(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path), "rows")
    fast, own = tracker.start_run("fast", {}), tracker.start_run("own", {})
    ts = int(time.time() * 1000)
    params = {"optim.lr": "0.01", "model.hidden": "[25, 25]", "long": "x" * 7000}
    bulk_insert(tracker, {fast: (_values(ts), params)})
    tracker.log_batch(own, _values(ts), params)  # MLflow's own writes, public API
    db = sqlite_uri(tmp_path).removeprefix("sqlite:///")
    expected = _rows(db, own)
    assert len(expected["metrics"]) == 1508 and len(expected["latest_metrics"]) == 3
    assert _rows(db, fast) == expected
    # Again (a sync after a partial upload), and an older value after a newer one: nothing
    # stored twice, the latest value stays the later one, on both paths.
    older = [Metric("curves/b", -1.0, ts, 5)]
    bulk_insert(tracker, {fast: (_values(ts) + older, params)})
    tracker.log_batch(own, older)
    assert _rows(db, fast) == _rows(db, own)


def test_bulk_insert_is_all_or_nothing(tmp_path):
    """One transaction: if the params cannot be written, no metric or latest value is either."""
    tracker = Tracker(sqlite_uri(tmp_path), "atomic")
    run = tracker.start_run("r", {})
    tracker.log_batch(run, params={"p": "old"})  # a param MLflow will not let change...
    db = sqlite_uri(tmp_path).removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:  # ...here: a trigger makes its insert fail
        con.execute(
            "CREATE TRIGGER no_params BEFORE INSERT ON params BEGIN "
            "SELECT RAISE(ABORT, 'params refused'); END"
        )
    with pytest.raises(Exception, match="params refused"):
        bulk_insert(tracker, {run: (_values(1), {"q": "new"})})
    rows = _rows(db, run)
    assert rows["metrics"] == [] and rows["latest_metrics"] == []


def _server_like(tmp_path, workers: int = 4) -> Tracker:
    tracker = Tracker(sqlite_uri(tmp_path), "pool", retry_s=30)
    tracker.workers = workers  # as against a server
    return tracker


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mtl-store")]


def _no_pool_threads_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _pool_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _pool_threads()


def test_parallel_keeps_order_and_raises_a_workers_error_as_is(tmp_path):
    tracker = _server_like(tmp_path)
    assert tracker.parallel(lambda x: x * x, range(20)) == [x * x for x in range(20)]
    started = []

    def work(x: int) -> int:
        started.append(x)
        if x == 3:
            raise StoreUnavailable("http://store", "no space left on device")
        time.sleep(0.05)
        return x

    with pytest.raises(StoreUnavailable, match="no space left"):
        tracker.parallel(work, range(200))
    assert len(started) < 200  # the rest was cancelled
    assert _no_pool_threads_within(5)


def test_parallel_store_faults_go_through_tracker_call(tmp_path):
    """A worker's store call is retried by `Tracker.call`; a fatal fault is StoreUnavailable
    in the caller, and the tracker then knows the store is down."""
    tracker = _server_like(tmp_path)

    def full(x: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(StoreUnavailable):
        tracker.parallel(lambda x: tracker.call(full, x), range(10))
    assert tracker.down is not None
    with pytest.raises(StoreUnavailable):
        tracker.call(lambda: None)


def test_an_interrupt_cancels_the_pool_and_stops_its_retries(tmp_path):
    """Ctrl-C (or Stopped, a KeyboardInterrupt) in the caller while workers wait out a busy
    store: the caller gets it at once, and no worker keeps retrying."""
    tracker = _server_like(tmp_path, workers=2)
    calls = []

    def busy() -> None:
        calls.append(1)
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    threading.Timer(0.5, _thread.interrupt_main).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        tracker.parallel(lambda x: tracker.call(busy), range(50))
    assert time.monotonic() - t0 < 10  # not the 30 s retry budget
    assert _no_pool_threads_within(10)
    n = len(calls)
    time.sleep(0.5)
    assert len(calls) == n  # nothing retries in the background
    assert tracker.down is None  # the store was not given up on: runs can still be ended


def _drawn(steps, values, kept):
    """The largest distance between the full curve and the line through the kept points."""
    return float(np.max(np.abs(np.interp(steps, steps[kept], values[kept]) - values)))


def test_curve_points_keep_the_shape_of_a_learning_curve_within_the_tolerance():
    steps = np.arange(0, 4001, 10)
    loss = 0.25 * np.exp(-steps / 60) + 0.02 * np.exp(-steps / 1500)  # a fast drop, then slow
    index = curve_points(steps.tolist(), loss.tolist(), 51, 0.01)
    assert index[0] == 0 and index[-1] == 400 and index == sorted(set(index))
    assert len(index) < 25  # a smooth curve needs few points...
    assert _drawn(steps, loss, index) <= 0.01 * np.ptp(loss)  # ...to be drawn within 1%
    assert sum(i < 10 for i in index) >= 4  # most of them where it drops (the first 100 epochs)
    # A regular stride of as many points misses the drop by a quarter of the range.
    stride = list(range(0, 401, 400 // (len(index) - 1)))
    assert _drawn(steps, loss, stride) > 0.25 * np.ptp(loss)


def test_replica_metrics_send_the_finals_and_each_curve_at_its_points():
    from types import SimpleNamespace

    from experiments.record_format import CURVE_METRIC, CURVES, FINAL
    from experiments.records import replica_metrics

    steps = np.arange(0, 4001, 10)
    rng = np.random.default_rng(1)
    curves = {"epoch": steps, **{k: rng.random((2, 401)) for k in CURVES}}
    result = SimpleNamespace(diverged=np.array([False, True]), diverged_epoch=np.array([-1, 7]))
    every = replica_metrics(curves, result, 1, 5)
    assert len(every) == 4 * 401 + 4 + 2 and {m.timestamp for m in every} == {5}
    thinned = replica_metrics(curves, result, 1, 5, points=51, tolerance=0.01)
    for key in CURVES:
        kept = [m for m in thinned if m.key == CURVE_METRIC[key]]
        want = curve_points(steps.tolist(), curves[key][1].tolist(), 51, 0.01)
        assert [m.step for m in kept] == [int(steps[i]) for i in want]
        assert [m.value for m in kept] == [curves[key][1][i] for i in want]
    finals = {m.key: m.value for m in thinned if not m.key.startswith("curves/")}
    assert finals == {**{FINAL[k]: curves[k][1][-1] for k in CURVES},
                      "final/diverged": 1.0, "final/diverged_epoch": 7.0}  # fmt: skip
    assert replica_metrics(curves, result, 1, 5, points=1000, tolerance=0.01) == every


def test_curve_points_stop_at_the_budget_and_keep_where_a_curve_diverges():
    rng = np.random.default_rng(0)
    steps = np.arange(401.0)
    noisy = 0.9 + 0.02 * rng.standard_normal(401)  # noise: never within 0.1% of its range
    kept = curve_points(steps, noisy, 51, 0.001)
    assert len(kept) == 51 and kept[0] == 0 and kept[-1] == 400
    budget = [_drawn(steps, noisy, curve_points(steps, noisy, n, 0.0)) for n in (11, 51, 201)]
    assert budget[0] > budget[1] > budget[2]  # more points, a closer line
    assert curve_points(steps, noisy, 401, 0.5) == list(range(401))  # within the budget: all
    diverged = np.where(steps < 150, 1.0 - steps / 300, np.nan)  # a straight line, then NaN
    kept = curve_points(steps, diverged, 51, 0.01)
    assert kept == [0, 149, 150, 400]  # the ends of the line and of the gap


def test_the_analysis_follows_experiment_pages_to_the_end(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from analysis import collect

    client = MlflowClient(sqlite_uri(tmp_path))
    names = {f"exp-{i}" for i in range(5)}
    for name in names:
        client.create_experiment(name)
    monkeypatch.setattr(collect, "_EXPERIMENT_PAGE", 2)  # 6 experiments (with Default): 3 pages
    assert {e.name for e in collect._experiments(client)} == names | {"Default"}
