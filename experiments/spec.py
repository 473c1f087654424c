"""What a training job computes and how it runs, as one frozen, checked value: `TrainSpec`.

The app builds it once from the composed config (`experiments.config.validate`), tests and
benchmarks from plain values (`TrainSpec(epochs=3)`; the defaults are the config's), and
`experiments.training.train_replicas` takes it whole. Standard library only: checking a config
imports neither torch nor Hydra, and the training loop does not import Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

# The names minitorch and experiments.data accept, spelled out so that checking a config does
# not import torch (seconds); tests/experiments/test_config.py checks they match theirs.
ACTIVATIONS = ("relu", "tanh", "sigmoid")
INIT_SCHEMES = ("torch", "xavier", "normal")
TANH_GRADS = ("exact", "report")
LOSSES = ("mse", "mae")
ENCODINGS = ("onehot", "pm1")
# minitorch.FusedMLPStep's kernels: "auto" takes the native one where it can be built, else
# torch's (~17x slower; TrainResult.kernel and the job run's mtl.kernel tag say which ran).
KERNELS = ("auto", "native", "torch")


class SpecError(ValueError):
    """A TrainSpec value is not accepted; one paragraph per problem."""


@dataclass(frozen=True)
class Problem:
    """One refused value: `check` names the rule (a field, or "layers" for their agreement)."""

    check: str
    message: str


@dataclass(frozen=True)
class TrainSpec:
    """Everything `train_replicas` needs besides the seeds: the model, its training, the data,
    and how the work is spread (workers, threads, kernel). Checked when built."""

    hidden: tuple[int, ...] = (25, 25, 25)
    activations: tuple[str, ...] = ("tanh", "tanh", "tanh")
    init: str = "torch"
    loss: str = "mse"
    # Tanh's derivative in every kernel: "exact" (1 - tanh^2) or "report" (its 2 sech(s)).
    tanh_grad: str = "exact"
    lr: float | tuple[float, ...] = 0.01  # one rate, or one per replica (tests, benchmarks)
    batch_size: int = 25
    epochs: int = 4000
    eval_every: int = 10
    n_train: int = 1000
    n_test: int = 1000
    encoding: str = "onehot"
    workers: int = 1  # processes the replicas are sharded over (1 thread each)
    threads: int = 1  # threads of a single-process job (torch's and the native kernel's)
    kernel: str = "auto"

    def __post_init__(self) -> None:
        # Lists become tuples (hashable, and equal whichever the caller passed).
        for name in ("hidden", "activations"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.lr, (int, float)):
            object.__setattr__(self, "lr", tuple(self.lr))
        problems = spec_problems(values_of(self))
        if problems:
            raise SpecError("\n\n".join(f"TrainSpec: {p.message}" for p in problems))


def values_of(spec: TrainSpec) -> dict[str, Any]:
    """The spec's fields by name (tuples kept, unlike dataclasses.asdict's copies)."""
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def _names(options: Any) -> str:
    return ", ".join(options)


def _shown(value: Any) -> Any:
    """Tuples shown as lists, as a config or a command line writes them."""
    return list(value) if isinstance(value, tuple) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _rates(lr: Any) -> list[Any]:
    return list(lr) if isinstance(lr, (tuple, list)) else [lr]


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf


# What each field accepts: a test of the values, and the text that says so ("{n_train}" is
# that field as the caller names it, with its value).
_RULES: dict[str, tuple[Callable[[dict[str, Any]], bool], str]] = {
    "hidden": (
        lambda v: len(v["hidden"]) > 0 and all(_is_int(h) and h > 0 for h in v["hidden"]),
        "a non-empty list of layer sizes > 0, e.g. [25,25,25]",
    ),
    "activations": (
        lambda v: all(a in ACTIVATIONS for a in v["activations"]),
        f"names among {_names(ACTIVATIONS)} (one per hidden layer)",
    ),
    "init": (lambda v: v["init"] in INIT_SCHEMES, f"one of {_names(INIT_SCHEMES)}"),
    "loss": (lambda v: v["loss"] in LOSSES, f"one of {_names(LOSSES)}"),
    "tanh_grad": (
        lambda v: v["tanh_grad"] in TANH_GRADS,
        "exact (Tanh backward multiplies by 1 - tanh(s)^2) or report (by the report's "
        "4 / (e^s + e^-s) = 2 sech(s), as written in its section II.A.2)",
    ),
    "lr": (
        lambda v: len(_rates(v["lr"])) > 0 and all(map(_finite_positive, _rates(v["lr"]))),
        "a finite learning rate > 0, e.g. 0.01",
    ),
    "n_train": (lambda v: _positive_int(v["n_train"]), "a number of points > 0, e.g. 1000"),
    "n_test": (lambda v: _positive_int(v["n_test"]), "a number of points > 0, e.g. 1000"),
    "batch_size": (
        lambda v: (
            _positive_int(v["batch_size"])
            and not (_positive_int(v["n_train"]) and v["batch_size"] > v["n_train"])
        ),
        "an integer from 1 to {n_train} (a batch cannot exceed the training set)",
    ),
    "epochs": (lambda v: _positive_int(v["epochs"]), "a number of epochs > 0"),
    "eval_every": (
        lambda v: _positive_int(v["eval_every"]),
        "a number of epochs > 0 between evaluations",
    ),
    "encoding": (lambda v: v["encoding"] in ENCODINGS, f"one of {_names(ENCODINGS)}"),
    "workers": (lambda v: _positive_int(v["workers"]), "a number of processes >= 1"),
    "threads": (
        lambda v: _positive_int(v["threads"]),
        "a number of threads >= 1 (torch's and the native kernel's; 1 per parallel job)",
    ),
    "kernel": (
        lambda v: v["kernel"] in KERNELS,
        f"one of {_names(KERNELS)} (auto: native where it can be built, else torch)",
    ),
}


def spec_problems(
    values: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every refused value of a would-be TrainSpec, named by `names` (field -> how the caller
    spells it, e.g. "lr" -> "optim.lr"; the field itself by default)."""
    v = dict(values)

    def key(name: str) -> str:  # "data.n_train=1000": a field, named as the caller does, = value
        return f"{label(name, names)}={_shown(v[name])!r}"

    problems = [
        Problem(name, f"{key(name)} is not accepted: {text.replace('{n_train}', key('n_train'))}.")
        for name, (ok, text) in _RULES.items()
        if not ok(v)
    ]
    return problems + _layer_problems(v, key, label("activations", names))


def label(name: str, names: Mapping[str, str] | None) -> str:
    """How the caller names a field: its config key ("optim.lr"), else the field ("lr")."""
    return (names or {}).get(name, name)


def _layer_problems(v: dict[str, Any], key: Callable[[str], str], acts_key: str) -> list[Problem]:
    """One activation per hidden layer."""
    hidden, acts = list(v["hidden"]), list(v["activations"])
    if not hidden or len(acts) == len(hidden):
        return []
    example = ",".join(acts[:1] * len(hidden)) or "tanh"
    return [
        Problem(
            "layers",
            f"{key('activations')} has {len(acts)} entries but {key('hidden')} has "
            f"{len(hidden)} hidden layers: give one activation per hidden layer, e.g. "
            f"{acts_key}=[{example}].",
        )
    ]
