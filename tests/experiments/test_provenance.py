"""Provenance in one place: the repo, the default store, git (commit, dirty, diff), versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments import provenance
from experiments.callbacks import _job_overrides
from experiments.record_format import Tag

ROOT = Path(__file__).resolve().parents[2]


def test_repo_root_and_default_store_are_the_checkouts(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert provenance.repo_root() == ROOT
    assert provenance.tracking_uri() == f"sqlite:///{ROOT}/runs/mlflow.db"
    assert provenance.tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert provenance.tracking_uri() == "sqlite:////tmp/x.db"
    assert provenance.tracking_uri(None) == "sqlite:////tmp/x.db"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=folder, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)
    provenance.git_state.cache_clear()
    yield tmp_path
    provenance.git_state.cache_clear()


def test_a_clean_tree_has_its_commit_and_no_diff(repo):
    state = provenance.git_state()
    assert state == provenance.GitState(_git(repo, "rev-parse", "HEAD"), False, "")
    assert provenance.write_files(repo / "out") is None  # nothing to keep


def test_a_dirty_tree_keeps_its_diff(repo, tmp_path):
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.txt").write_text("untracked files do not make the tree dirty\n")
    state = provenance.git_state()
    assert state.dirty
    assert "-x = 1" in state.diff and "+x = 2" in state.diff
    tags = provenance.run_tags("report", ["optim.lr=0.1"])
    assert tags[Tag.GIT_DIRTY] == "true" and tags[Tag.GIT_COMMIT] == state.commit
    folder = provenance.write_files(tmp_path / "prov", OmegaConf.create({"a": {"b": 1}}))
    assert (folder / "git.diff").read_text() == state.diff
    assert OmegaConf.load(folder / "multirun.yaml") == {"a": {"b": 1}}


def test_outside_a_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)
    provenance.git_state.cache_clear()
    try:
        assert provenance.git_state() == provenance.GitState("unknown", False, "")
    finally:
        provenance.git_state.cache_clear()


def test_run_tags_name_the_command_software_and_machine():
    tags = provenance.run_tags("grid", ["optim.lr=0.1,0.3", "seed=2"], multirun=True)
    assert tags[Tag.STUDY] == "grid"
    assert tags[Tag.COMMAND] == "python -m experiments.train -m optim.lr=0.1,0.3 seed=2"
    assert tags[Tag.OVERRIDES] == "optim.lr=0.1,0.3 seed=2"
    versions = dict(v.split("=", 1) for v in tags[Tag.VERSIONS].split())
    assert list(versions) == list(provenance.SOFTWARE)
    assert versions["torch"] == metadata.version("torch")
    assert versions["mlflow"] == metadata.version("mlflow")
    assert tags[Tag.PYTHON].startswith("CPython 3.")
    assert tags[Tag.CPU] and "cores" in tags[Tag.CPU]


@pytest.mark.parametrize(
    ("params", "task"),
    [
        ({}, ["optim.lr=0.1,0.3", "trainer.batch_size=10,25,50"]),
        ({"optim.lr": "0.1,0.3"}, ["optim.lr=0.5", "+x=range(3)"]),  # the command line wins
        ({"model.act1": "tanh,relu"}, ["seed=3", "model.act2=choice(tanh,relu)"]),
    ],
)
def test_the_planned_jobs_are_those_hydras_basic_sweeper_runs(params, task):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    cfg = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": params},
        "overrides": {"task": task}}})  # fmt: skip
    args = [f"{k}={v}" for k, v in params.items()] + task
    hydras = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    assert _job_overrides(cfg) == hydras[0]
    assert len(hydras[0]) > 1
