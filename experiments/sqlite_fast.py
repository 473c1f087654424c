"""The one private fast path: MLflow runs, metrics and params written in bulk into a sqlite store.

MLflow's public `log_batch` builds one ORM object per value (~5,700 values/s on sqlite here),
which made the report study's 110 x 1,604 curve points a 31 s affair; written here through the
store's own engine and table definitions it is ~100,000 values/s.

PRIVATE MLflow internals: the SqlAlchemyStore's engine and tables (runs, tags, metrics,
latest_metrics, params). Used by `experiments.tracking.Tracker` only for sqlite:/// stores and
only when the tables have the columns below; otherwise `NoFastPath` is raised before anything is
written and the Tracker takes the public API. Each function writes in one transaction (all or
nothing). Tested row for row against MLflow's own writes (tests/experiments/test_logging.py,
tests/experiments/test_tracking_speed.py); pyproject.toml bounds mlflow to the versions those
tests ran on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from experiments.errors import StoreUnavailable
from experiments.record_format import Tag


class NoFastPath(Exception):
    """This store is not the SqlAlchemy sqlite store this module was written for: nothing was
    written; use MLflow's public API."""


_METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
_PARAM_COLUMNS = ("key", "value", "run_uuid")


def _sql_store(client: MlflowClient) -> Any:
    """The client's SQLAlchemy store, or NoFastPath."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except Exception as exc:
        raise NoFastPath(f"MLflow internals moved: {exc}") from None
    if type(store) is not SqlAlchemyStore:  # not a subclass either (e.g. workspace scoping)
        raise NoFastPath(f"store is {type(store).__name__}")
    return store


_RUN_FIELDS = {"name", "artifact_uri", "run_uuid", "experiment_id", "source_type", "source_name",
               "entry_point_name", "user_id", "status", "start_time", "end_time", "deleted_time",
               "source_version", "lifecycle_stage"}  # fmt: skip


def create_runs(
    tracker: Any, runs: list[tuple[str, dict[str, str]]], start: int
) -> list[tuple[str, str]]:
    """Create RUNNING runs with their tags in one transaction, with exactly the fields MLflow's
    SqlAlchemyStore.create_run sets (tests/experiments/test_logging.py compares the two);
    returns (run id, artifact uri) pairs."""
    client, experiment_id = tracker.client, tracker.experiment_id
    store = _sql_store(client)
    try:
        import uuid

        from mlflow.entities import LifecycleStage, RunStatus, SourceType
        from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
        from mlflow.utils.uri import append_to_uri_path

        if not set(SqlRun.__table__.columns.keys()) >= _RUN_FIELDS or hasattr(SqlRun, "workspace"):
            raise NoFastPath(f"runs table has columns {list(SqlRun.__table__.columns.keys())}")
        experiment = tracker.call(client.get_experiment, experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise NoFastPath(f"experiment {experiment_id} is {experiment.lifecycle_stage}")
        folder = store.ARTIFACTS_FOLDER_NAME
        rows, created = [], []
        for name, tags in runs:
            run_id = uuid.uuid4().hex
            uri = append_to_uri_path(experiment.artifact_location, run_id, folder)
            row = SqlRun(
                name=name,
                artifact_uri=uri,
                run_uuid=run_id,
                experiment_id=experiment_id,
                source_type=SourceType.to_string(SourceType.UNKNOWN),
                source_name="",
                entry_point_name="",
                user_id=tags.get("mlflow.user", "unknown"),
                status=RunStatus.to_string(RunStatus.RUNNING),
                start_time=start + len(rows),
                end_time=None,
                deleted_time=None,
                source_version="",
                lifecycle_stage=LifecycleStage.ACTIVE,
            )
            all_tags = {**tags, Tag.RUN_NAME: tags.get(Tag.RUN_NAME, name)}
            row.tags = [SqlTag(key=k, value=v) for k, v in all_tags.items()]
            rows.append(row)
            created.append((run_id, uri))
    except (NoFastPath, StoreUnavailable):
        raise
    except Exception as exc:
        raise NoFastPath(f"MLflow internals moved: {exc}") from None

    def write() -> None:
        with store.ManagedSessionMaker(read_only=False) as session:
            session.add_all(rows)

    tracker.call(write)
    return created


def end_runs(client: MlflowClient, run_ids: list[str], status: str, end: int) -> None:
    """Set status and end time of active runs, as MLflow's set_terminated, in one UPDATE."""
    store = _sql_store(client)
    try:
        from mlflow.entities import LifecycleStage, RunStatus
        from mlflow.store.tracking.dbmodels.models import SqlRun

        value = RunStatus.to_string(RunStatus.from_string(status))
    except Exception as exc:
        raise NoFastPath(f"MLflow internals moved: {exc}") from None
    with store.ManagedSessionMaker(read_only=False) as session:
        for i in range(0, len(run_ids), 500):  # sqlite's limit on bound parameters
            session.query(SqlRun).filter(
                SqlRun.run_uuid.in_(run_ids[i : i + 500]),
                SqlRun.lifecycle_stage == LifecycleStage.ACTIVE,
            ).update({"status": value, "end_time": end}, synchronize_session=False)


def _rows(
    runs: Mapping[str, tuple[list[Metric], Mapping[str, str]]],
) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The metrics, latest_metrics and params rows of `runs`, as MLflow's log_batch makes them
    (NaN stored as 0 with is_nan, +-inf as +-max float; the latest value of a key is its largest
    (step, timestamp, value))."""
    metric_rows: list[tuple] = []
    latest_rows: list[tuple] = []
    param_rows: list[tuple] = []
    big = 1.7976931348623157e308  # what MLflow stores for +-inf
    for run_id, (metrics, params) in runs.items():
        latest: dict[str, tuple] = {}
        for m in metrics:
            key, value, timestamp, step = m.key, m.value, m.timestamp, m.step
            is_nan = value != value
            if is_nan:
                value = 0.0
            elif value in (math.inf, -math.inf):
                value = math.copysign(big, value)
            row = (key, value, timestamp, step, is_nan, run_id)
            metric_rows.append(row)
            # MLflow's "latest": the largest (step, timestamp, value).
            old = latest.get(key)
            if old is None or (step, timestamp, value) > (old[3], old[2], old[1]):
                latest[key] = row
        latest_rows += latest.values()
        param_rows += [(k, str(v)[:6000], run_id) for k, v in params.items()]
    return metric_rows, latest_rows, param_rows


def bulk_insert(tracker: Any, runs: Mapping[str, tuple[list[Metric], Mapping[str, str]]]) -> None:
    """INSERT the rows MLflow's own log_batch would write (metrics, latest_metrics, params),
    using the store's engine and table definitions, all in one transaction. Idempotent, as
    log_batch: a row already there is left alone (metrics and params: same primary key, same
    values), a latest value is replaced only by a later one, so a sync can complete runs a
    killed job filled in part. Raises NoFastPath before writing anything if the store is not
    the SQLAlchemy store this was written for."""
    store = _sql_store(tracker.client)
    try:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam
    except Exception as exc:
        raise NoFastPath(f"MLflow internals moved: {exc}") from None
    tables = {
        SqlMetric.__table__: _METRIC_COLUMNS,
        SqlLatestMetric.__table__: _METRIC_COLUMNS,
        SqlParam.__table__: _PARAM_COLUMNS,
    }
    for table, columns in tables.items():
        if not set(columns) <= set(table.columns.keys()):
            raise NoFastPath(f"table {table.name} has columns {list(table.columns.keys())}")

    metric_rows, latest_rows, param_rows = _rows(runs)

    def insert(table: Any, columns: tuple[str, ...], tail: str) -> str:
        marks = ", ".join("?" for _ in columns)
        return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks}) {tail}"

    cols = ", ".join(f"{c} = excluded.{c}" for c in ("value", "timestamp", "step", "is_nan"))
    statements = [
        # metrics, params: a row already there (same primary key) is left alone, as log_batch.
        (insert(SqlMetric.__table__, _METRIC_COLUMNS, "ON CONFLICT DO NOTHING"), metric_rows),
        # latest_metrics: replaced only by a later (step, timestamp, value), as MLflow does.
        (
            insert(
                SqlLatestMetric.__table__,
                _METRIC_COLUMNS,
                f"ON CONFLICT (key, run_uuid) DO UPDATE SET {cols} WHERE (excluded.step, "
                f"excluded.timestamp, excluded.value) > (step, timestamp, value)",
            ),
            latest_rows,
        ),
        (insert(SqlParam.__table__, _PARAM_COLUMNS, "ON CONFLICT DO NOTHING"), param_rows),
    ]

    def write() -> None:
        # One transaction, all or nothing, in the store's own session (foreign keys on, 20 s
        # busy timeout for parallel writers): ~2 s of write lock for the report's 110 runs.
        with store.ManagedSessionMaker(read_only=False) as session:
            connection = session.connection()
            for sql, rows in statements:
                if rows:
                    connection.exec_driver_sql(sql, rows)

    tracker.call(write)
