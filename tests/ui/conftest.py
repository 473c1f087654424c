"""The browser test's fixtures: a quick sweep trained for real into a sqlite store, a real
`mlflow server` on it, and headless Debian Chromium driven by selenium.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium,
/usr/bin/chromedriver) and the pip package `selenium`; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.experiments.conftest import REPO
from tests.experiments.procs import MlflowServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_WAIT_S = 600  # in CI: how long to wait for .ci/run's background install
EXPERIMENT = "ui"
# The sweep the UI is opened on: 2 jobs (two learning rates) x 2 replicas, 20 epochs; no
# per-replica figures or weights (job figures stay on).
SWEEP = ["experiment=quick", "trainer.epochs=20", "trainer.eval_every=5", "optim.lr=0.01,0.1",
         "replicas=2", "trainer.progress=false", "tracking.replica_figures=false",
         "tracking.replica_weights=false", f"tracking.experiment={EXPERIMENT}"]  # fmt: skip


@dataclass
class UiStore:
    uri: str  # the mlflow server, e.g. http://127.0.0.1:40123
    experiment_id: str
    jobs: list  # mlflow Run objects of mtl.kind = job
    replicas: list  # mtl.kind = replica


def _missing() -> list[str]:
    return [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]


@pytest.fixture(scope="session")
def chrome_paths() -> tuple[str, str]:
    """Chromium and its driver; in CI (CI=true, where .ci/run installs them in the background)
    waited for up to INSTALL_WAIT_S, then a failure; elsewhere a skip with the reason."""
    deadline = time.monotonic() + (INSTALL_WAIT_S if os.environ.get("CI") else 0)
    while _missing() and time.monotonic() < deadline:
        time.sleep(2)
    if _missing():
        reason = (
            f"browser test needs {' and '.join(_missing())}: "
            "apt-get install -y chromium chromium-driver"
        )
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    pytest.importorskip("selenium", reason="browser test needs `pip install selenium`")
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="session")
def ui_store(chrome_paths, tmp_path_factory) -> UiStore:
    """A quick sweep trained for real (python -m experiments.train -m ...) into
    <tmp>/srv.db, served by a real `mlflow server` (stopped by its process group at the end)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ui")
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "experiments.train", "-m", *SWEEP,
           f"tracking.uri=sqlite:///{root}/srv.db", f"hydra.sweep.dir={root}/sweep",
           f"hydra.run.dir={root}/run"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    server = MlflowServer(root)  # serves sqlite:///<root>/srv.db
    uri = server.start()
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None, f"no experiment {EXPERIMENT!r} in {root}/srv.db"
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        kind = lambda k: [r for r in runs if r.data.tags.get("mtl.kind") == k]  # noqa: E731
        store = UiStore(uri, exp.experiment_id, kind("job"), kind("replica"))
        assert len(store.jobs) == 2 and len(store.replicas) == 4, [r.info.run_name for r in runs]
        yield store
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(chrome_paths):
    """Headless Chromium, a fresh profile, no background networking (the closed network
    refuses connections otherwise)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chrome_paths
    profile = tempfile.mkdtemp(prefix="mtl-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=2200,1200"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(request, browser):
    """On failure, a screenshot under $MTL_UI_SHOTS (default: the pytest tmp dir) to look at."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        out = Path(os.environ.get("MTL_UI_SHOTS", tempfile.gettempdir()))
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{request.node.name}.png"
        browser.save_screenshot(str(path))
        print(f"screenshot: {path}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
