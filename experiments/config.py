"""The config schema (dataclasses in Hydra's ConfigStore) and the checks run before any work.

Hydra type-checks values against the schema while composing (``optim.lr=abc`` is refused there);
`validate` checks what types cannot: ranges, names, lengths and keys added with ``+key=value``.
It runs before any data is made or any MLflow run is created.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

# The names minitorch accepts, spelled out so that checking a config does not import torch
# (seconds); tests/experiments/test_config.py checks they match minitorch's.
ACTIVATIONS = ("relu", "tanh", "sigmoid")
INIT_SCHEMES = ("torch", "xavier", "normal")
TANH_GRADS = ("exact", "report")
LOSSES = ("mse", "mae")
ENCODINGS = ("onehot", "pm1")
OPTIMIZERS = ("sgd",)
DATASETS = ("disk",)
# Keys that change how a job runs, not what it computes: left out of the config hash.
EXECUTION_KEYS = (
    "trainer.threads",
    "trainer.workers",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.checkpoint_dir",
)
# Per-layer shorthands: they only feed model.activations, which is what is logged.
SHORTHAND_KEYS = ("model.act1", "model.act2", "model.act3")


class ConfigError(Exception):
    """A config value or the environment it names is not usable; the message says why."""


def repo_root() -> Path:
    """The directory holding pyproject.toml (an editable install), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


@dataclass
class ModelConfig:
    """The MLP 2 -> hidden... -> 2; one activation per hidden layer."""

    hidden: list[int] = field(default_factory=lambda: [25, 25, 25])
    # act1..act3 fill the default activations list, so one layer can be swept on its own:
    # `-m model.act1=tanh,relu model.act2=tanh,relu`. Other depths set model.activations.
    act1: str = "tanh"
    act2: str = "tanh"
    act3: str = "tanh"
    activations: list[str] = field(
        default_factory=lambda: ["${model.act1}", "${model.act2}", "${model.act3}"]
    )
    init: str = "torch"
    loss: str = "mse"
    # Tanh's derivative in backward: exact (1 - tanh^2) or report, the report's 4 / (e^s + e^-s)
    # = 2 sech(s) (section II.A.2), to measure what it changed. Part of the config hash.
    tanh_grad: str = "exact"


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01


@dataclass
class DataConfig:
    name: str = "disk"
    n_train: int = 1000
    n_test: int = 1000
    encoding: str = "onehot"


@dataclass
class TrainerConfig:
    epochs: int = 4000
    batch_size: int = 25
    eval_every: int = 10
    threads: int = 1  # threads per job (torch, native kernel): 1 keeps parallel jobs apart
    workers: int = 1  # processes the replicas of one job are sharded over (1 thread each)
    progress: bool = True  # a bar on a terminal, a few plain lines otherwise
    # Epochs between checkpoints (0: none); the same command resumes from the last one.
    checkpoint_every: int = 500
    checkpoint_dir: str = "${mtl.repo:}/runs/checkpoints"


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/runs/mlflow.db
    experiment: str = "minitorch"
    replica_figures: bool = True  # figures/loss.png and figures/accuracy.png per replica
    replica_weights: bool = True  # weights.pt per replica
    figure_dpi: int = 80
    server_timeout_s: float = 5.0  # how long an http(s) tracking server may take to answer
    retry_s: float = 60.0  # how long to wait out a store that fails, before giving up on it
    rerun: bool = False  # train again even if the same config and seeds already FINISHED
    live_every_s: float = 5.0  # seconds between sends of a training job's mean curves (0: off)
    # Points per curve in a replica run's metric history on a server (curves.csv has all; a
    # server ingests a few thousand values a second); 0: every point.
    server_history_points: int = 101


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    replicas: int = 1


def register_configs() -> None:
    """Put the schema in the ConfigStore as `base_config` (the first default of config.yaml)."""
    ConfigStore.instance().store(name="base_config", node=Config)


def _register_resolvers() -> None:
    OmegaConf.register_new_resolver("mtl.repo", lambda: str(repo_root()), replace=True)


register_configs()
_register_resolvers()


def _names(options: Any) -> str:
    return ", ".join(options)


def _unknown_keys(node: Any, schema: type, prefix: str) -> list[str]:
    """Keys of `node` that the dataclass `schema` does not declare (added with `+key=...`)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out = []
    for key in node:
        dotted = f"{prefix}{key}"
        if key not in fields:
            out.append(dotted)
            continue
        sub = fields[key].default_factory  # type: ignore[misc]
        if dataclasses.is_dataclass(sub) and isinstance(node[key], DictConfig):
            out += _unknown_keys(node[key], sub, f"{dotted}.")  # type: ignore[arg-type]
    return out


def validate(cfg: DictConfig) -> None:
    """Check every value; raise ConfigError with one paragraph per problem found."""
    problems: list[str] = []

    def bad(key: str, value: Any, accepted: str) -> None:
        problems.append(f"{key}={value!r} is not accepted: {accepted}.")

    keys = [k for k in cfg if k != "hydra"]
    extra = _unknown_keys(OmegaConf.masked_copy(cfg, keys), Config, "")
    for key in extra:
        problems.append(
            f"{key} is not a key of this app's config (it was probably added with `+{key}=...`); "
            f"top-level keys are {_names(f.name for f in dataclasses.fields(Config))}, and each "
            f"group's keys are listed by `python -m experiments.train --cfg job`."
        )
    if extra:  # the rest may be missing or mistyped too; report the keys first
        raise ConfigError("\n\n".join(problems))

    try:
        OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg)))
    except Exception as exc:  # an interpolation that points nowhere
        raise ConfigError(f"The config does not resolve: {exc}") from None

    m, o, d, t, tr = cfg.model, cfg.optim, cfg.data, cfg.trainer, cfg.tracking
    hidden = list(m.hidden)
    if not hidden or any(h <= 0 for h in hidden):
        bad("model.hidden", hidden, "a non-empty list of layer sizes > 0, e.g. [25,25,25]")
    reported = set()
    for key in ("act1", "act2", "act3"):
        if m[key] not in ACTIVATIONS:
            bad(f"model.{key}", m[key], f"an activation name, one of {_names(ACTIVATIONS)}")
            reported.add(m[key])
    acts = list(m.activations)
    unknown = {a for a in acts if a not in ACTIVATIONS}
    if unknown - reported:  # not when they came from a model.actN already reported
        bad("model.activations", acts, f"names among {_names(ACTIVATIONS)} (one per hidden layer)")
    if hidden and len(acts) != len(hidden):
        example = ",".join(acts[:1] * len(hidden)) or "tanh"
        problems.append(
            f"model.activations={acts!r} has {len(acts)} entries but model.hidden={hidden!r} has "
            f"{len(hidden)} hidden layers: give one activation per hidden layer, e.g. "
            f"model.activations=[{example}] (model.act1..act3 only fill the default list of three)."
        )
    if m.init not in INIT_SCHEMES:
        bad("model.init", m.init, f"one of {_names(INIT_SCHEMES)}")
    if m.loss not in LOSSES:
        bad("model.loss", m.loss, f"one of {_names(LOSSES)}")
    if m.tanh_grad not in TANH_GRADS:
        bad(
            "model.tanh_grad",
            m.tanh_grad,
            "exact (Tanh backward multiplies by 1 - tanh(s)^2) or report (by the report's "
            "4 / (e^s + e^-s) = 2 sech(s), as written in its section II.A.2)",
        )
    if o.name not in OPTIMIZERS:
        bad("optim.name", o.name, f"one of {_names(OPTIMIZERS)}")
    if not (o.lr > 0 and o.lr < float("inf")):
        bad("optim.lr", o.lr, "a finite learning rate > 0, e.g. 0.01")
    if d.name not in DATASETS:
        bad("data.name", d.name, f"one of {_names(DATASETS)}")
    for key in ("n_train", "n_test"):
        if d[key] <= 0:
            bad(f"data.{key}", d[key], "a number of points > 0, e.g. 1000")
    if d.encoding not in ENCODINGS:
        bad("data.encoding", d.encoding, f"one of {_names(ENCODINGS)}")
    if t.epochs <= 0:
        bad("trainer.epochs", t.epochs, "a number of epochs > 0")
    if t.batch_size <= 0 or (d.n_train > 0 and t.batch_size > d.n_train):
        bad(
            "trainer.batch_size",
            t.batch_size,
            f"an integer from 1 to data.n_train={d.n_train} (a batch cannot exceed the "
            "training set)",
        )
    if t.eval_every <= 0:
        bad("trainer.eval_every", t.eval_every, "a number of epochs > 0 between evaluations")
    if t.threads <= 0:
        bad("trainer.threads", t.threads, "a number of torch threads >= 1 (1 per parallel job)")
    if t.workers <= 0:
        bad("trainer.workers", t.workers, "a number of processes >= 1")
    if t.checkpoint_every < 0:
        bad("trainer.checkpoint_every", t.checkpoint_every, "a number of epochs >= 0 (0: off)")
    if cfg.replicas <= 0:
        bad("replicas", cfg.replicas, "a number of seeds >= 1 trained together")
    if cfg.seed < 0:
        bad("seed", cfg.seed, "an integer >= 0 (replica r uses seed+r)")
    if not tr.experiment:
        bad("tracking.experiment", tr.experiment, "a non-empty MLflow experiment name")
    if tr.figure_dpi <= 0:
        bad("tracking.figure_dpi", tr.figure_dpi, "a resolution > 0, e.g. 80")
    if not tr.server_timeout_s > 0:
        bad("tracking.server_timeout_s", tr.server_timeout_s, "a number of seconds > 0")
    if not 0 < tr.retry_s <= 3600:
        bad("tracking.retry_s", tr.retry_s, "a number of seconds in (0, 3600], e.g. 60")
    if tr.server_history_points < 0 or tr.server_history_points == 1:
        bad(
            "tracking.server_history_points",
            tr.server_history_points,
            "0 (every point) or a number of points >= 2 per curve, e.g. 101",
        )
    if not 0 <= tr.live_every_s < float("inf"):
        bad("tracking.live_every_s", tr.live_every_s, "a number of seconds >= 0 (0: off), e.g. 5")
    if problems:
        raise ConfigError("\n\n".join(problems))


def _flat_value(value: Any, brackets: bool) -> str:
    if isinstance(value, (list, tuple, ListConfig)):
        inner = ",".join(_flat_value(v, brackets) for v in value)
        return f"[{inner}]" if brackets else inner
    return "None" if value is None else str(value)


def flatten(cfg: DictConfig, brackets: bool = True) -> dict[str, str]:
    """The resolved config as dotted keys and string values; lists as the command line writes
    them, ``[tanh,relu]`` (``tanh,relu`` with brackets=False, as the config hash has them)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if key == "hydra":
                continue
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{dotted}.")
            elif dotted not in SHORTHAND_KEYS:
                out[dotted] = _flat_value(value, brackets)

    walk(container, "")
    return out


def config_hash(cfg: DictConfig) -> str:
    """sha256[:12] of what the job computes: the config without seed, replicas, tracking.* and
    the execution keys (threads, workers, progress), so the same model shares one hash."""
    flat = flatten(cfg, brackets=False)  # the spelling of format 1: hashes stay as they were
    kept = {
        k: v
        for k, v in flat.items()
        if k not in ("seed", "replicas")
        and k not in EXECUTION_KEYS
        and not k.startswith("tracking.")
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]
