"""The config schema (dataclasses in Hydra's ConfigStore) and the checks run before any work.

Hydra type-checks values against the schema while composing (``optim.lr=abc`` is refused there);
`validate` checks what types cannot: ranges, names, lengths and keys added with ``+key=value``,
and returns the job's TrainSpec (experiments/spec.py), the one value the training takes. It
runs before any data is made or any MLflow run is created.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.provenance import repo_root
from experiments.spec import (  # noqa: F401  (the accepted names, also read from here)
    ACTIVATIONS,
    ENCODINGS,
    INIT_SCHEMES,
    KERNELS,
    LOSSES,
    TANH_GRADS,
    TrainSpec,
    spec_problems,
)

# The names minitorch accepts (ACTIVATIONS, INIT_SCHEMES, TANH_GRADS, LOSSES, ENCODINGS,
# KERNELS) are spelled out in experiments/spec.py, beside the TrainSpec that checks them, so
# that checking a config imports no torch; tests/experiments/test_config.py checks they match.
OPTIMIZERS = ("sgd",)
DATASETS = ("disk",)
# Keys that change how a job runs, not what it computes: left out of the config hash.
EXECUTION_KEYS = (
    "trainer.threads",
    "trainer.workers",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.checkpoint_dir",
    "trainer.kernel",
)
# Per-layer shorthands: they only feed model.activations, which is what is logged.
SHORTHAND_KEYS = ("model.act1", "model.act2", "model.act3")


class ConfigError(Exception):
    """A config value or the environment it names is not usable; the message says why."""


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
    # minitorch.FusedMLPStep's kernel: auto (native where it builds, else torch), native, torch.
    kernel: str = "auto"


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/runs/mlflow.db
    experiment: str = "minitorch"
    replica_figures: bool = True  # figures/curves.png (loss and accuracy) per replica
    replica_weights: bool = True  # weights.pt per replica
    figure_dpi: int = 80
    server_timeout_s: float = 5.0  # how long an http(s) tracking server may take to answer
    retry_s: float = 60.0  # how long to wait out a store that fails, before giving up on it
    rerun: bool = False  # train again even if the same config and seeds already FINISHED
    live_every_s: float = 5.0  # seconds between sends of a training job's mean curves (0: off)
    # A replica run's curves in the metric history (curves.csv has every point): at most
    # this many points per curve (0: every point), those that draw the curve within
    # history_tolerance x its range (experiments/tracking.py, curve_points).
    history_points: int = 51
    history_tolerance: float = 0.01


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


# Where each TrainSpec field is in the config: errors name the key the user wrote.
SPEC_KEYS = {
    "hidden": "model.hidden",
    "activations": "model.activations",
    "init": "model.init",
    "loss": "model.loss",
    "tanh_grad": "model.tanh_grad",
    "lr": "optim.lr",
    "batch_size": "trainer.batch_size",
    "epochs": "trainer.epochs",
    "eval_every": "trainer.eval_every",
    "n_train": "data.n_train",
    "n_test": "data.n_test",
    "encoding": "data.encoding",
    "workers": "trainer.workers",
    "threads": "trainer.threads",
    "kernel": "trainer.kernel",
}


def validate(cfg: DictConfig) -> TrainSpec:
    """Check every value and return the job's TrainSpec; raise ConfigError with one paragraph
    per problem found. Imports neither torch nor MLflow: a bad value costs a fraction of a
    second and leaves no trace."""
    _check_keys(cfg)  # the rest may be missing or mistyped too: unknown keys are said first
    _check_resolves(cfg)
    values = spec_values(cfg)
    problems = [*_shorthand_problems(cfg.model), *_job_problems(cfg)]
    problems += _spec_problems(values, cfg.model)
    problems += _tracking_problems(cfg.tracking)
    if problems:
        raise ConfigError("\n\n".join(problems))
    return TrainSpec(**values)


def spec_values(cfg: DictConfig) -> dict[str, Any]:
    """The TrainSpec fields' values in the composed config (lists as tuples)."""
    values = {}
    for name, key in SPEC_KEYS.items():
        value = OmegaConf.select(cfg, key)
        values[name] = tuple(value) if isinstance(value, ListConfig) else value
    return values


def _bad(key: str, value: Any, accepted: str) -> str:
    return f"{key}={value!r} is not accepted: {accepted}."


def _check_keys(cfg: DictConfig) -> None:
    """Keys the schema does not declare (added with `+key=...`) are refused by name."""
    keys = [k for k in cfg if k != "hydra"]
    extra = _unknown_keys(OmegaConf.masked_copy(cfg, keys), Config, "")
    if extra:
        top = _names(f.name for f in dataclasses.fields(Config))
        raise ConfigError(
            "\n\n".join(
                f"{key} is not a key of this app's config (it was probably added with "
                f"`+{key}=...`); top-level keys are {top}, and each group's keys are listed "
                "by `python -m experiments.train --cfg job`."
                for key in extra
            )
        )


def _check_resolves(cfg: DictConfig) -> None:
    try:
        OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg)))
    except Exception as exc:  # an interpolation that points nowhere
        raise ConfigError(f"The config does not resolve: {exc}") from None


def _shorthand_problems(m: DictConfig) -> list[str]:
    return [
        _bad(f"model.{key}", m[key], f"an activation name, one of {_names(ACTIVATIONS)}")
        for key in ("act1", "act2", "act3")
        if m[key] not in ACTIVATIONS
    ]


def _spec_problems(values: dict[str, Any], m: DictConfig) -> list[str]:
    """TrainSpec's checks, named by config key; a bad name in model.activations that came
    from a model.actN already reported is not reported twice."""
    from_shorthands = {m[k] for k in ("act1", "act2", "act3") if m[k] not in ACTIVATIONS}
    unknown = {a for a in values["activations"] if a not in ACTIVATIONS}
    out = []
    for p in spec_problems(values, SPEC_KEYS):
        if p.check == "activations" and unknown <= from_shorthands:
            continue
        if p.check == "layers":  # the shorthands are a common way to get there
            out.append(f"{p.message[:-1]} (model.act1..act3 only fill the default list of three).")
            continue
        out.append(p.message)
    return out


def _job_problems(cfg: DictConfig) -> list[str]:
    """What is not in the TrainSpec: the seeds, the groups' names, checkpoints."""
    checks = [
        ("optim.name", cfg.optim.name in OPTIMIZERS, f"one of {_names(OPTIMIZERS)}"),
        ("data.name", cfg.data.name in DATASETS, f"one of {_names(DATASETS)}"),
        ("trainer.checkpoint_every", cfg.trainer.checkpoint_every >= 0,
         "a number of epochs >= 0 (0: off)"),
        ("replicas", cfg.replicas > 0, "a number of seeds >= 1 trained together"),
        ("seed", cfg.seed >= 0, "an integer >= 0 (replica r uses seed+r)"),
    ]  # fmt: skip
    return [_bad(key, OmegaConf.select(cfg, key), text) for key, ok, text in checks if not ok]


def _tracking_problems(tr: DictConfig) -> list[str]:
    points = tr.history_points
    checks = [
        ("experiment", bool(tr.experiment), "a non-empty MLflow experiment name"),
        ("figure_dpi", tr.figure_dpi > 0, "a resolution > 0, e.g. 80"),
        ("server_timeout_s", tr.server_timeout_s > 0, "a number of seconds > 0"),
        ("retry_s", 0 < tr.retry_s <= 3600, "a number of seconds in (0, 3600], e.g. 60"),
        ("history_points", points == 0 or points >= 2,
         "0 (every point) or a number of points >= 2 per curve, e.g. 51"),
        ("history_tolerance", 0 <= tr.history_tolerance < 1,
         "a fraction of a curve's range in [0, 1), e.g. 0.01 (0: as many points as allowed)"),
        ("live_every_s", 0 <= tr.live_every_s < float("inf"),
         "a number of seconds >= 0 (0: off), e.g. 5"),
    ]  # fmt: skip
    return [_bad(f"tracking.{key}", tr[key], text) for key, ok, text in checks if not ok]


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
