"""Build a multilayer perceptron from sizes and activation names."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minitorch.activations import ACTIVATIONS, Tanh, check_tanh_grad
from minitorch.linear import Generators, Linear
from minitorch.module import Module, Sequential


def mlp(
    sizes: Sequence[int],
    activations: Sequence[str],
    *,
    replicas: int | None = None,
    init: str = "torch",
    generator: Generators = None,
    dtype: torch.dtype = torch.float32,
    tanh_grad: str = "exact",
) -> Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... with activations[i] after hidden layer i.

    The last layer has no activation (the report's test model: 2-25-25-25-2, MSE on its output).
    `tanh_grad` is every Tanh's derivative: "exact" or "report" (see `Tanh`).
    """
    check_tanh_grad(tanh_grad, "mlp")
    if len(activations) != len(sizes) - 2:
        raise ValueError(
            f"mlp: {len(activations)} activations {list(activations)} for sizes {list(sizes)}; "
            f"expected one per hidden layer ({len(sizes) - 2})."
        )
    unknown = [a for a in activations if a not in ACTIVATIONS]
    if unknown:
        raise ValueError(
            f"mlp: unknown activation(s) {unknown}; accepted: {', '.join(ACTIVATIONS)}."
        )
    layers: list[Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(
            Linear(n_in, n_out, replicas=replicas, init=init, generator=generator, dtype=dtype)
        )
        if i < len(activations):
            act = ACTIVATIONS[activations[i]]
            layers.append(Tanh(grad=tanh_grad) if act is Tanh else act())
    return Sequential(*layers)
