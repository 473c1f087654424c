"""The MLflow UI (3.17, headless Chromium) on a quick sweep trained for real: what a researcher
meets must hold. Explicit waits only; each assertion names what the page showed instead."""

from __future__ import annotations

import pytest

from experiments.record_format import CURVE_METRIC, TEST_ACC_MEAN, Artifact
from experiments.ui_views import runs_url

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

WAIT_S = 30
JOB_FIGURE = Artifact.JOB_FIGURE


def _wait(driver, timeout: float = WAIT_S, **kwargs):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, **kwargs)


_SCROLL_RIGHT = """for (const e of document.querySelectorAll(
  '.ag-body-horizontal-scroll-viewport, .ag-center-cols-viewport, .ag-header-viewport'))
  e.scrollLeft = e.scrollWidth;"""


def _grid_rows(driver) -> list[str]:
    """Text of the runs table's rows (pinned + scrolling parts joined), in row order; the
    table scrolled fully right (it only draws the columns in view)."""
    return driver.execute_script(
        _SCROLL_RIGHT
        + """const m = {};
        for (const r of document.querySelectorAll('[role=row][row-index]')) {
          const i = +r.getAttribute('row-index');
          m[i] = (m[i] || '') + ' ' + r.innerText.replace(/\\n/g, ' ');
        }
        return Object.keys(m).sort((a, b) => a - b).map(k => m[k].trim());"""
    )


def _header_names(driver) -> list[str]:
    driver.execute_script(_SCROLL_RIGHT)
    return [h.text.strip() for h in driver.find_elements("css selector", "[role=columnheader]")]


def test_jobs_view_lists_every_job_with_test_acc_mean(ui_store, browser, shots):
    """The URL the harness prints opens the runs table ("Model training") in the ready-made
    jobs view: every job row, the test_acc_mean column, best first, with no clicking."""
    browser.get(runs_url(ui_store.uri, ui_store.experiment_id, "mtl-jobs"))
    names = [r.info.run_name for r in ui_store.jobs]
    _wait(browser).until(
        lambda d: all(any(n in row for row in _grid_rows(d)) for n in names),
        message=f"runs table never listed the jobs {names}",
    )
    _wait(browser).until(
        lambda d: TEST_ACC_MEAN in _header_names(d),
        message=f"the view shows no {TEST_ACC_MEAN} column; headers: {_header_names(browser)}",
    )
    rows = _grid_rows(browser)
    assert len(rows) == len(names), f"rows other than the jobs: {rows}"
    for job in ui_store.jobs:
        value = job.data.metrics[TEST_ACC_MEAN]
        (row,) = [r for r in rows if job.info.run_name in r]
        assert str(value)[:5] in row, f"{TEST_ACC_MEAN}={value} not in row {row!r}"
    top = max(j.data.metrics[TEST_ACC_MEAN] for j in ui_store.jobs)
    assert str(top)[:5] in rows[0], f"sorted by {TEST_ACC_MEAN}, best first: {rows}"


def test_job_page_shows_its_figure(ui_store, browser, shots):
    """A job run's artifact view renders figures/curves.png as an image."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    job = ui_store.jobs[0]
    client = MlflowClient(ui_store.uri)
    listed = [a.path for a in client.list_artifacts(job.info.run_id)]
    listed += [a.path for a in client.list_artifacts(job.info.run_id, "figures")]
    assert JOB_FIGURE in listed, f"job run {job.info.run_name} has no {JOB_FIGURE}: {listed}"

    browser.get(
        f"{ui_store.uri}/#/experiments/{ui_store.experiment_id}/runs/{job.info.run_id}"
        f"/artifacts/{JOB_FIGURE}"
    )
    name = JOB_FIGURE.rsplit("/", 1)[-1]
    _wait(browser).until(
        lambda d: any(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in d.find_elements(By.CSS_SELECTOR, "img[src^='blob:'], img[src*='artifact']")
        ),
        message=f"artifact view never rendered {JOB_FIGURE} as an image",
    )
    assert browser.find_elements(By.XPATH, f"//*[contains(text(), '{name}')]"), (
        f"{name} not named in the artifact view"
    )


def test_replica_metrics_page_starts_with_curves(ui_store, browser, shots):
    """A replica's metrics tab: the first four charts are its curves, not single values."""
    from selenium.webdriver.common.by import By

    replica = ui_store.replicas[0]
    browser.get(
        f"{ui_store.uri}/#/experiments/{ui_store.experiment_id}/runs/{replica.info.run_id}"
        "/model-metrics"
    )
    card_titles = "[data-testid=experiment-view-compare-runs-card] h4[title]"
    want = len(CURVE_METRIC)
    seen: list[str] = []

    def first_charts(driver):
        # Charts are drawn only near the view (and dropped once far above it): scroll to the
        # last one drawn, keeping every key in the order first seen, until enough.
        # The title attribute is the full metric key ("final/test_acc"), the text its last part.
        cards = driver.find_elements(By.CSS_SELECTOR, card_titles)
        seen.extend(k for k in (h.get_attribute("title") for h in cards) if k not in seen)
        if len(seen) >= want:
            return seen
        if cards:
            driver.execute_script("arguments[0].scrollIntoView()", cards[-1])
        return False

    keys = _wait(browser).until(first_charts, message=f"metrics tab drew fewer than {want} charts")
    first = keys[:want]
    assert set(first) == set(CURVE_METRIC.values()), (
        f"first charts are {first}, want the curves; all charts in order: {keys}"
    )
