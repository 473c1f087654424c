"""What the fast path needs to know about a model and a loss, read one declared way.

Modules and losses say what they are through their `kind` (`Module.kind`, `Loss.kind`), and a
Tanh its derivative through `grad`; `mlp_parts` reads a `Sequential` that way into a plain
description (sizes, activation names, the shared tensors), so the kernels never look at module
types, and anything the kernels cannot compile is refused here, once, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minitorch.losses import Loss
from minitorch.module import Module, Sequential

ACTIVATION_KINDS = ("tanh", "sigmoid", "relu")  # the hidden activations the kernels compile
LOSS_KINDS = ("mse", "mae")


@dataclass(frozen=True)
class MLPParts:
    """A `Sequential(Linear, act, ..., Linear)` as plain values.

    The tensors are the model's own (weights [R, out, in] or [out, in], biases, and their
    gradients), so a kernel that writes them trains the model itself.
    """

    sizes: tuple[int, ...]  # in, hidden..., out
    activations: tuple[str, ...]  # one of ACTIVATION_KINDS per hidden layer
    tanh_grad: str  # every Tanh's derivative: "exact" or "report" (see minitorch.Tanh)
    replicas: int | None  # None: weights without the replica axis
    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    grad_weights: tuple[Tensor, ...]
    grad_biases: tuple[Tensor, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype


def mlp_parts(model: Module, where: str = "mlp_parts") -> MLPParts:
    """`model` as an `MLPParts`; anything but alternating Linear and activation modules (one
    Tanh derivative for all) is refused, naming `where` (the caller) and the offending module."""
    if not isinstance(model, Sequential):
        raise TypeError(
            f"{where}: the model is {model!r}; expected a Sequential of alternating Linear and "
            "ReLU/Tanh/Sigmoid modules (minitorch.mlp builds one)."
        )
    linears: list[Module] = []
    acts: list[str] = []
    tanh_grads: set[str] = set()
    for i, m in enumerate(model.modules):
        if i % 2 == 0 and m.kind == "linear":
            linears.append(m)
        elif i % 2 == 1 and m.kind in ACTIVATION_KINDS:
            acts.append(m.kind)
            if m.kind == "tanh":
                tanh_grads.add(m.grad)  # type: ignore[attr-defined]  # Tanh declares it
        else:
            raise TypeError(
                f"{where}: module {i} is {m!r}; expected alternating Linear and "
                "ReLU/Tanh/Sigmoid modules, starting and ending with Linear."
            )
    if len(linears) != len(acts) + 1 or not acts:
        raise TypeError(
            f"{where}: the model must have at least one hidden layer and end with a Linear layer."
        )
    if len(tanh_grads) > 1:
        raise TypeError(
            f"{where}: the model's Tanh modules mix derivatives {sorted(tanh_grads)}; "
            "expected one for all (mlp(..., tanh_grad=...) builds such a model)."
        )
    return _describe(linears, tuple(acts), tanh_grads.pop() if tanh_grads else "exact")


def _describe(linears: list[Module], acts: tuple[str, ...], tanh_grad: str) -> MLPParts:
    """The plain description of checked Linear layers, read through `Module.params()`."""
    pairs = [m.params() for m in linears]  # each [(weight, its grad), (bias, its grad)]
    w, gw = tuple(p[0][0] for p in pairs), tuple(p[0][1] for p in pairs)
    b, gb = tuple(p[1][0] for p in pairs), tuple(p[1][1] for p in pairs)
    replicas = w[0].shape[0] if w[0].dim() == 3 else None
    sizes = (w[0].shape[-1], *(t.shape[-2] for t in w))
    return MLPParts(sizes, acts, tanh_grad, replicas, w, b, gw, gb)


def loss_kind(loss: Loss, where: str = "loss_kind") -> str:
    """The loss's `kind` if the kernels compute it ("mse" or "mae"), else a TypeError."""
    kind = getattr(loss, "kind", None)
    if kind not in LOSS_KINDS:
        raise TypeError(f"{where}: loss {loss!r} is not supported; expected MSE or MAE.")
    return kind
