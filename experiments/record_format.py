"""The MLflow record, declared once: the names the harness writes and the analysis reads.

No imports beyond the standard library: the writer (experiments), the reader (analysis) and
the tests' fake stores all use these names, so a name changes in one place. Every run carries
``mtl.format`` = VERSION; a reader meeting a newer version says so instead of misreading it.

Runs nest ``sweep`` (a multirun) -> ``job`` (one Hydra job: replicas seeds trained together)
-> ``replica`` (one seed); an ``analysis`` run stands apart and names what it read.

- sweep run: params ``sweep.<key>`` (the swept values) and the shared config; tags STUDY,
  COMMAND, OVERRIDES, SWEEP_DIR, SWEEP_KEY (finds it again when re-run), N_JOBS (planned),
  BEST_JOB_RUN_ID; metrics N_JOBS_FINISHED, BEST; artifact SWEEP_JOBS (the planned jobs).
- job run: params = the flattened config without the seed; tags CONFIG_HASH, SEEDS,
  SWEEP_RUN_ID, JOB_NUM, BUNDLE, BUNDLE_ID, provenance; metrics the mean curves
  (``<curve>_mean`` by epoch), STATS, TIMES; artifact CONFIG.
- replica run: params = the config and its seed; tags SEED, JOB_RUN_ID, DIVERGED; metrics the
  CURVES by epoch, FINAL, DIVERGED_METRIC, DIVERGED_EPOCH; artifacts CONFIG, CURVES_CSV, WEIGHTS,
  FIGURES.
- every run: FORMAT, KIND, STUDY, the owning process (HOST, PID, PID_START, BOOT_ID; sweep and
  job runs also HEARTBEAT), ERROR when it ended FAILED or KILLED.
"""

from __future__ import annotations

VERSION = "1"


class Kind:
    """Values of the KIND tag."""

    SWEEP = "sweep"
    JOB = "job"
    REPLICA = "replica"
    ANALYSIS = "analysis"


class Tag:
    """Tag keys (``mtl.*`` are the harness's own; ``mlflow.*`` are MLflow's, which it reads)."""

    FORMAT = "mtl.format"
    KIND = "mtl.kind"
    STUDY = "mtl.study"
    ERROR = "mtl.error"
    # provenance
    COMMAND = "mtl.command"
    OVERRIDES = "mtl.overrides"
    GIT_COMMIT = "mtl.git_commit"
    GIT_DIRTY = "mtl.git_dirty"
    TORCH_THREADS = "mtl.torch_threads"
    BULK_INSERT = "mtl.bulk_insert"
    LAUNCHER = "mtl.launcher"
    # where a run belongs
    CONFIG_HASH = "mtl.config_hash"
    SEED = "mtl.seed"
    SEEDS = "mtl.seeds"
    DIVERGED = "mtl.diverged"
    JOB_RUN_ID = "mtl.job_run_id"
    JOB_NUM = "mtl.job_num"
    SWEEP_RUN_ID = "mtl.sweep_run_id"
    SWEEP_DIR = "mtl.sweep_dir"
    SWEEP_KEY = "mtl.sweep_key"
    N_JOBS = "mtl.n_jobs"
    RESUMED = "mtl.resumed"
    BEST_JOB_RUN_ID = "mtl.best_job_run_id"
    BEST_JOB_OVERRIDES = "mtl.best_job_overrides"
    BUNDLE = "mtl.bundle"
    BUNDLE_ID = "mtl.bundle_id"
    ANALYSED_RUN_IDS = "mtl.analysed_run_ids"
    ANALYSED_JOB_RUN_IDS = "mtl.analysed_job_run_ids"
    # the process that owns a run (experiments/reaper.py)
    HOST = "mtl.host"
    PID = "mtl.pid"
    PID_START = "mtl.pid_start"
    BOOT_ID = "mtl.boot_id"
    HEARTBEAT = "mtl.heartbeat"
    # MLflow's own
    PARENT_RUN_ID = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    GIT_SOURCE_COMMIT = "mlflow.source.git.commit"


# Metrics. Curves are logged by epoch (step = epoch) on replica runs, their means on job runs.
CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")
FINAL = {curve: f"final_{curve}" for curve in CURVES}
MEAN = {curve: f"{curve}_mean" for curve in CURVES}
DIVERGED_METRIC = "diverged"
DIVERGED_EPOCH = "diverged_epoch"
TEST_ACC_MEAN = MEAN["test_acc"]  # what a job returns to sweepers and the UI sorts by
STATS = ("test_acc_std", "test_acc_min", "test_acc_max", "n_replicas", "n_diverged")
N_JOBS = "n_jobs"
N_JOBS_FINISHED = "n_jobs_finished"
BEST = "best_test_acc_mean"


class Artifact:
    """Artifact paths inside a run."""

    CONFIG = "config.yaml"
    CURVES_CSV = "curves.csv"
    WEIGHTS = "weights.pt"
    FIGURES = ("figures/loss.png", "figures/accuracy.png")
    SWEEP_JOBS = "sweep_jobs.json"


# Run names, short enough for the runs table, a legend and a page title (< 48 characters).
NAME_LENGTH = 48
_SHORT = {"optim.lr": "lr", "trainer.batch_size": "bs", "trainer.epochs": "ep",
          "model.activations": "", "model.act1": "a1=", "model.act2": "a2=", "model.act3": "a3=",
          "model.hidden": "h", "model.loss": "", "model.init": "", "data.n_train": "n",
          "data.encoding": "", "replicas": "x", "seed": "seed"}  # fmt: skip


def short_setting(key: str, value: str) -> str:
    """One setting as a run name shows it: optim.lr=0.03 -> lr0.03, [tanh,relu] -> tanh-relu."""
    value = value.strip("[]'\" ").replace(",", "-").replace(" ", "")
    prefix = _SHORT.get(key, key.rsplit(".", 1)[-1] + "=")
    return f"{prefix}{value}"


def job_name(settings: dict[str, str], job_num: int | None, study: str) -> str:
    """``j19 bs10 lr0.03 tanh-tanh-relu`` in a sweep (settings: what the sweep varies), else
    ``report lr0.01 bs25 tanh-tanh-tanh x110`` (settings: lr, batch, activations, replicas)."""
    parts = [f"j{job_num}" if job_num is not None else study]
    parts += [short_setting(k, v) for k, v in settings.items()]
    return " ".join(parts)[:NAME_LENGTH]


def replica_name(seed: int, job_num: int | None, study: str) -> str:
    """``s5 j19`` (seed 5 of sweep job 19), or ``s5 report`` outside a sweep."""
    return f"s{seed} {f'j{job_num}' if job_num is not None else study}"[:NAME_LENGTH]


def sweep_name(study: str, n_jobs: int | None, swept: list[str]) -> str:
    """``sweep grid x100: bs lr acts``: the study, its size and the keys it varies."""
    size = f" x{n_jobs}" if n_jobs else ""
    label = {**_SHORT, "model.activations": "acts"}
    keys = " ".join((label.get(k) or k.rsplit(".", 1)[-1]).rstrip("=") for k in swept)
    return f"sweep {study}{size}: {keys}"[:NAME_LENGTH] if keys else f"sweep {study}{size}"


def where(**conditions: str) -> str:
    """An MLflow filter string: ``where(**{Tag.KIND: Kind.JOB})`` -> tags.`mtl.kind` = 'job'.
    Keys are tag keys, or ``status`` for the run's status."""
    parts = []
    for key, value in conditions.items():
        quoted = str(value).replace("'", "\\'")
        column = "attributes.status" if key == "status" else f"tags.`{key}`"
        parts.append(f"{column} = '{quoted}'")
    return " and ".join(parts)
