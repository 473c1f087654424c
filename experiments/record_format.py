"""The MLflow record, declared once: the names the harness writes and the analysis reads.

No imports beyond the standard library: the writer (experiments), the reader (analysis) and
the tests' fake stores all use these names, so a name changes in one place. Every run carries
``mtl.format`` = VERSION; a reader meeting a newer version says so instead of misreading it.

Runs nest ``sweep`` (a multirun) -> ``job`` (one Hydra job: replicas seeds trained together)
-> ``replica`` (one seed); an ``analysis`` run stands apart and names what it read.

Designed for the MLflow UI (format 2), which draws one collapsible section of charts per metric
prefix before ``/``, sections in character order and unprefixed metrics last: curves are under
``curves/``, so a run page opens on them; single values under ``final/``, ``stats/``, ``time/``;
the key the runs table sorts by, ``test_acc_mean``, unprefixed. Params are what the model
computes (model, optim, data, batch size, epochs, seed; ``replicas`` on job runs), plus
``acts`` and ``log10_lr`` for readable axes; how a run was executed (threads, workers,
tracking.*) goes to ``mtl.cfg.*`` tags.

- sweep run: params ``sweep.<key>`` (the swept values) and the shared config; tags STUDY,
  COMMAND, OVERRIDES, SWEEP_DIR, SWEEP_KEY (finds it again when re-run), N_JOBS (planned),
  BEST_JOB_RUN_ID, BEST_JOB; metrics TEST_ACC_MEAN (the best job's) and JOBS_FINISHED, both
  with step = jobs finished, so they grow while the sweep runs, and N_JOBS; artifacts
  SWEEP_JOBS (the planned jobs), JOBS_CSV (ranked) and JOBS_FIGURE.
- job run: params = the science of the config without the seed; tags CONFIG_HASH, SEEDS,
  SWEEP_RUN_ID, JOB_NUM, BUNDLE, BUNDLE_ID, provenance; metrics MEAN curves (by epoch, over
  the replicas not diverged at that epoch; sent while it trains), TEST_ACC_MEAN (the last
  point of its curve), STATS, time_key(part); artifacts
  CONFIG, REPLICAS_CSV (per-seed finals), JOB_FIGURE.
- replica run: params = the science and its seed; tags SEED, JOB_RUN_ID, DIVERGED, BUNDLE,
  BUNDLE_ID and REPLICA_COPIES of its job run's (not how it ran, not provenance); metrics
  CURVE_METRIC by epoch (at most tracking.history_points per curve, chosen by shape), FINAL
  (incl. final/diverged, final/diverged_epoch); artifacts CONFIG, CURVES_CSV (every point at
  full precision), WEIGHTS, REPLICA_FIGURE (before 2026-11-30: figures/loss.png and
  figures/accuracy.png).
- every run: FORMAT, KIND, STUDY, the owning process (HOST, PID, PID_START, BOOT_ID; sweep and
  job runs also HEARTBEAT), ERROR when it ended FAILED or KILLED.

Accuracies are stored as k / n exactly (the nearest float to the fraction, which prints short).
Format 1 (before 2026-11-29) had unprefixed curves, named single values ``final_test_acc``,
``test_acc_std``, ``time_train_s``, stored every config key as a param and lists as ``a,b``;
metrics_v2, curve_metric and params_v2 read it.
"""

from __future__ import annotations

import math

VERSION = "2"


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
    KERNEL = "mtl.kernel"  # the kernel that trained a job: native, or torch (the fallback)
    # A job trained in one batch with the other learning rates of its configuration
    # (hydra/launcher=lr_groups): which jobs and which job run trained them. Absent: alone.
    TRAINED_WITH = "mtl.trained_with"
    PYTHON = "mtl.python"  # implementation, version and interpreter path
    VERSIONS = "mtl.versions"  # torch=... numpy=... mlflow=... (experiments/provenance.py)
    CPU = "mtl.cpu"  # model name, cores, system
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
    BEST_JOB = "mtl.best_job"  # the best job's run name
    CFG_PREFIX = "mtl.cfg."  # + an execution key of the config: mtl.cfg.trainer.threads
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


# The job run's tags a replica run repeats: where it belongs and what it computed (with
# MLflow's own mlflow.* tags). How it ran (mtl.cfg.*) and the provenance (command, versions,
# git state, CPU) are its job run's, its parent: 45 tags a replica cost a server ~30% of its
# run creation (benchmarks/README.md).
REPLICA_COPIES = (Tag.FORMAT, Tag.STUDY, Tag.CONFIG_HASH, Tag.SWEEP_RUN_ID, Tag.JOB_NUM)


def replica_tags(job_tags: dict[str, str]) -> dict[str, str]:
    """The tags of a job run that its replica runs repeat (REPLICA_COPIES and mlflow.*)."""
    return {k: v for k, v in job_tags.items() if k in REPLICA_COPIES or k.startswith("mlflow.")}


# Metrics. Curves are logged by epoch (step = epoch) on replica runs, their means on job runs.
CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")  # also curves.csv's columns
ACCURACIES = ("train_acc", "test_acc")
CURVE_METRIC = {curve: f"curves/{curve}" for curve in CURVES}
FINAL = {curve: f"final/{curve}" for curve in CURVES}
MEAN = {curve: f"curves/{curve}_mean" for curve in CURVES}
DIVERGED_METRIC = "final/diverged"
DIVERGED_EPOCH = "final/diverged_epoch"
TEST_ACC_MEAN = "test_acc_mean"  # what a job returns to sweepers and the UI sorts by
STATS = {name: f"stats/{name}" for name in
         ("test_acc_std", "test_acc_min", "test_acc_max", "n_replicas", "n_diverged")}  # fmt: skip
N_JOBS = "stats/n_jobs"
JOBS_FINISHED = "jobs_finished"  # on the sweep run, step = the count: a growing line
BEST = TEST_ACC_MEAN  # the sweep run's best job, under the key its jobs use


def time_key(part: str) -> str:
    """The metric of a job's seconds spent on `part`: time/train_s, time/logging_metrics_s."""
    return f"time/{part}_s"


# Format 1 metric names -> format 2, for readers of older stores.
READ_V1 = {
    **{f"final_{c}": FINAL[c] for c in CURVES},
    "diverged": DIVERGED_METRIC,
    "diverged_epoch": DIVERGED_EPOCH,
    **{name: key for name, key in STATS.items()},
    "n_jobs": N_JOBS,
    "best_test_acc_mean": BEST,
}


def curve_metric(curve: str, version: str | None) -> str:
    """The metric holding a replica run's curve in the format that wrote it."""
    return curve if (version or "1") == "1" else CURVE_METRIC[curve]


def metrics_v2(metrics: dict[str, float], version: str | None) -> dict[str, float]:
    """A run's latest metrics under format 2's names, whichever format wrote them."""
    if (version or "1") != "1":
        return metrics
    out = {READ_V1.get(k, k): v for k, v in metrics.items()}
    for key, value in metrics.items():
        if key.startswith("time_") and key.endswith("_s"):
            out[time_key(key[5:-2])] = value
    return out


def params_v2(params: dict[str, str], version: str | None) -> dict[str, str]:
    """A run's params as format 2 spells them: lists in brackets, [tanh,relu]."""
    if (version or "1") != "1":
        return params
    return {k: f"[{v}]" if k in LIST_PARAMS and not v.startswith("[") else v
            for k, v in params.items()}  # fmt: skip


# Params: what a run computes. Everything else in the config says how it ran: a tag.
DERIVED_PARAMS = ("acts", "log10_lr")  # for the UI's axes; readers use the config's keys
LIST_PARAMS = ("model.hidden", "model.activations")
SCIENCE = ("model.", "optim.", "data.", "trainer.batch_size", "trainer.epochs",
           "trainer.eval_every", "seed", "replicas")  # fmt: skip
ACT_LETTERS = {"relu": "R", "tanh": "T", "sigmoid": "S"}


def short_acts(activations: list[str] | tuple[str, ...]) -> str:
    """The ``acts`` param, short enough for an axis label: [tanh,tanh,relu] -> TTR."""
    return "".join(ACT_LETTERS.get(a, a[:1].upper()) for a in activations)


def split_config(flat: dict[str, str], seed: int | None = None) -> tuple[dict, dict]:
    """(params, tags) of a flattened config: the science, plus ``acts`` and ``log10_lr``;
    the execution keys as ``mtl.cfg.<key>`` tags. With `seed` (a replica run) the seed is a
    param and ``replicas`` a tag; without (job and sweep runs) the seed is left out."""
    params = {k: v for k, v in flat.items() if k.startswith(SCIENCE) and k != "seed"}
    if seed is not None:
        params["seed"] = str(seed)
        params.pop("replicas", None)
    tags = {Tag.CFG_PREFIX + k: v for k, v in flat.items() if k not in params and k != "seed"}
    acts = flat.get("model.activations")
    if acts is not None:
        params["acts"] = short_acts(acts.strip("[]").split(","))
    log10_lr = _log10(flat.get("optim.lr", ""))
    if log10_lr is not None:
        params["log10_lr"] = log10_lr
    return params, tags


def _log10(value: str) -> str | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return f"{math.log10(x):.3g}" if x > 0 else None


class Artifact:
    """Artifact paths inside a run."""

    CONFIG = "config.yaml"
    CURVES_CSV = "curves.csv"
    WEIGHTS = "weights.pt"
    REPLICA_FIGURE = "figures/curves.png"  # a replica's loss and accuracy, side by side
    SWEEP_JOBS = "sweep_jobs.json"
    REPLICAS_CSV = "replicas.csv"  # a job's seeds and their final metrics
    JOB_FIGURE = "figures/curves.png"  # a job's mean curves, band and seeds
    JOBS_CSV = "jobs.csv"  # a sweep's jobs, ranked by test_acc_mean
    JOBS_FIGURE = "figures/jobs.png"
    PROVENANCE = "provenance"  # git.diff (a dirty tree), multirun.yaml (a sweep's Hydra config)


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
