"""Ready-made views of the MLflow UI's runs table, stored with every experiment the harness
makes, and the direct URL that opens one.

MLflow 3.17 opens an experiment on its GenAI page, shows 100 runs per page and no metric
columns; its saved views ("Views" menu) are experiment tags ``mlflow.sharedViewState.<key>``
holding the table's state, deflated and base64-encoded. Looked at in headless Chromium on a
100-job grid sweep (1,101 runs): with replica runs nested under their jobs, the first page
holds 10 jobs and their seeds; the ``jobs`` view (kind = job, sorted by test_acc_mean) holds all
100 jobs on one page with the columns that answer "which configuration is best, how sure are
we". The state is the UI's own, not a public API: if a later MLflow reads it differently, the
view is ignored and the table opens as usual; nothing else depends on it.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import zlib

from experiments.record_format import FINAL, STATS, TEST_ACC_MEAN, Kind, Tag, where

VIEW_TAG = "mlflow.sharedViewState."


def _metric(key: str) -> str:
    return f"metrics.`{key}`"


def _param(key: str) -> str:
    return f"params.`{key}`"


# key -> (name in the Views menu, filter, sort column, columns shown)
VIEWS = {
    "mtl-jobs": (
        "jobs by test_acc_mean",
        where(**{Tag.KIND: Kind.JOB}),
        _metric(TEST_ACC_MEAN),
        [_metric(TEST_ACC_MEAN), _metric(STATS["test_acc_std"]), _metric(STATS["n_replicas"]),
         _metric(STATS["n_diverged"]), _param("optim.lr"), _param("trainer.batch_size"),
         _param("acts"), _param("trainer.epochs")],
    ),
    "mtl-seeds": (
        "seeds by final test accuracy",
        where(**{Tag.KIND: Kind.REPLICA}),
        _metric(FINAL["test_acc"]),
        [_metric(FINAL["test_acc"]), _metric(FINAL["test_loss"]), _param("seed"),
         _param("optim.lr"), _param("trainer.batch_size"), _param("acts")],
    ),
}  # fmt: skip


def _state(flt: str, order_by: str, columns: list[str]) -> str:
    state = {
        "searchFilter": flt, "orderByKey": order_by, "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [], "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "isAccordionReordered": False, "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
    }  # fmt: skip
    return "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode(), 9)).decode()


def view_tags() -> dict[str, str]:
    """The experiment tags that hold the views (MLflow's "Views" menu lists them)."""
    now = int(time.time() * 1000)
    return {
        VIEW_TAG + key: json.dumps(
            {"name": name, "createdAt": now, "updatedAt": now, "state": _state(*rest)}
        )
        for key, (name, *rest) in VIEWS.items()
    }


def runs_url(server: str, experiment_id: str, view: str = "mtl-jobs") -> str:
    """The runs table of an experiment ("Model training", not the GenAI page) in a view."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "viewStateShareKey": view})
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
