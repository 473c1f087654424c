"""Where a result came from, in one place: the repository, the default store, the code (git
commit, and the diff when the tree is dirty), the command, the software and the machine.

Every run the harness creates carries `run_tags` (sweep and job runs; replica runs inherit the
job's), so a reader can trust a number without asking who ran it how: the `mtl.git_commit`
(with `mtl.git_dirty`, and the diff as the artifact `provenance/git.diff` when it is dirty),
the `mtl.command` that reproduces it, `mtl.python`, `mtl.versions` (torch, mlflow, hydra-core,
numpy, scipy, ...) and `mtl.cpu`. Which kernel trained it is known only after training: the
job run's `mtl.kernel` (experiments/upload.py). A multirun's sweep run also keeps Hydra's
composed `multirun.yaml` as `provenance/multirun.yaml`.

Standard library only (Hydra's override parser is imported where it is used): the analysis
imports this module too, for `repo_root` and the default store.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments.record_format import Tag

# The distributions whose versions decide a number (mtl.versions), in this order.
SOFTWARE = ("torch", "numpy", "mlflow", "hydra-core", "omegaconf", "scipy", "matplotlib")
GIT_DIFF_LIMIT = 1_000_000  # characters of `git diff HEAD` kept (a larger diff is cut, marked)


def repo_root() -> Path:
    """The directory holding pyproject.toml (an editable install: where runs/ lives), else the
    working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def default_tracking_uri() -> str:
    """The store used when neither tracking.uri nor $MLFLOW_TRACKING_URI names one: an absolute
    sqlite path (MLflow 3 refuses the old ./mlruns file store)."""
    return f"sqlite:///{repo_root() / 'runs' / 'mlflow.db'}"


def tracking_uri(configured: str | None = None) -> str:
    """`configured`, else $MLFLOW_TRACKING_URI, else `default_tracking_uri()`."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


@dataclass(frozen=True)
class GitState:
    """The code a process runs: its commit ("unknown" outside a git checkout), whether tracked
    files differ from it, and that difference (`git diff HEAD`, "" when clean)."""

    commit: str
    dirty: bool
    diff: str


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=True
    ).stdout


@functools.lru_cache(maxsize=1)
def git_state() -> GitState:
    """The repository's state, read once per process (a sweep's jobs share it)."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
        diff = _git("diff", "HEAD") if dirty else ""
    except (OSError, subprocess.SubprocessError):
        return GitState("unknown", False, "")
    if len(diff) > GIT_DIFF_LIMIT:
        diff = diff[:GIT_DIFF_LIMIT] + f"\n[cut at {GIT_DIFF_LIMIT} characters]\n"
    return GitState(commit, dirty, diff)


def command_line(overrides: Iterable[str], multirun: bool = False) -> str:
    """The command that reproduces a job (or a sweep) from its Hydra overrides."""
    args = ["python", "-m", "experiments.train", *(["-m"] if multirun else [])]
    return " ".join(args + [shlex.quote(o) for o in overrides])


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def software() -> str:
    """``torch=2.13.0 numpy=... mlflow=...``: the installed versions of `SOFTWARE`."""
    out = []
    for name in SOFTWARE:
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=missing")
    return " ".join(out)


def environment() -> dict[str, str]:
    """Python, the libraries and the CPU, as tags."""
    python = f"{platform.python_implementation()} {platform.python_version()}"
    cores = f"{os.cpu_count()} cores"
    return {
        Tag.PYTHON: f"{python} ({sys.executable})",
        Tag.VERSIONS: software(),
        Tag.CPU: f"{cpu_model()}, {cores}, {platform.system()} {platform.machine()}",
    }


def run_tags(study: str, overrides: list[str], multirun: bool = False) -> dict[str, str]:
    """The provenance tags of a sweep run (`multirun`) or a job run: what ran, from which code,
    on what software and machine."""
    git = git_state()
    return {
        Tag.STUDY: study,
        Tag.GIT_COMMIT: git.commit,
        Tag.GIT_DIRTY: str(git.dirty).lower(),
        Tag.GIT_SOURCE_COMMIT: git.commit,
        Tag.COMMAND: command_line(overrides, multirun),
        Tag.OVERRIDES: " ".join(overrides),
        **environment(),
    }


def write_files(folder: Path, multirun_config: Any = None) -> Path | None:
    """The provenance files into `folder` (made if needed): `git.diff` when the tree is dirty,
    `multirun.yaml` (Hydra's composed multirun config, given as an OmegaConf object); returns
    the folder, or None when there is nothing to write."""
    diff = git_state().diff
    if not diff and multirun_config is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    if diff:
        (folder / "git.diff").write_text(diff)
    if multirun_config is not None:
        from omegaconf import OmegaConf

        (folder / "multirun.yaml").write_text(OmegaConf.to_yaml(multirun_config))
    return folder
