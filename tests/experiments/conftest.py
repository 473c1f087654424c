"""Shared helpers: temporary MLflow stores, the app in a subprocess, composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

import experiments.config  # noqa: F401  (registers the schema and the mtl.repo resolver)
import experiments.train  # noqa: F401  (registers hydra/launcher=lr_groups, as the app does)

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
QUICK_FAST = ["tracking.replica_figures=false"]


def app_args(tmp_path: Path, *args: str) -> list[str]:
    """Command line of the app with its Hydra output dirs under tmp_path."""
    return [
        sys.executable,
        "-m",
        "experiments.train",
        *args,
        f"hydra.run.dir={tmp_path}/hydra/run",
        f"hydra.sweep.dir={tmp_path}/hydra/sweep",
    ]


def run_app(tmp_path: Path, *args: str, timeout: float = 240, env: dict | None = None):
    """Run the app to completion; returns the CompletedProcess (text stdout/stderr)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        app_args(tmp_path, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def runs_by_kind(client: MlflowClient, experiment: str) -> dict[str, list]:
    """All runs of an experiment grouped by their mtl.kind tag."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing"
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=5000):
        out.setdefault(run.data.tags.get("mtl.kind", "?"), []).append(run)
    return out


def compose_cfg(*overrides: str, hydra_node: bool = False) -> DictConfig:
    """The app's config for these overrides, composed like the app does."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = sqlite_uri(tmp_path)
    return uri, MlflowClient(uri)
