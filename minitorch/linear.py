"""Fully connected layer, optionally holding R independent replicas in one tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minitorch.init import INIT_SCHEMES, init_linear
from minitorch.module import Module, Param

Generators = torch.Generator | Sequence[torch.Generator] | None


class Linear(Module):
    """y = x W^T + b.

    Without replicas: weight [out, in], bias [out], input [B, in].
    With `replicas=R`: weight [R, out, in], bias [R, out], input [R, B, in]; the R models are
    computed in one batched matrix product. `generator` may be one generator per replica, so
    that replica r is initialised exactly as a single model built from generator r.
    """

    kind = "linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        replicas: int | None = None,
        init: str = "torch",
        generator: Generators = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Linear: {name}={v!r}; expected a positive integer.")
        if replicas is not None and (not isinstance(replicas, int) or replicas <= 0):
            raise ValueError(f"Linear: replicas={replicas!r}; expected None or a positive integer.")
        if init not in INIT_SCHEMES:
            raise ValueError(
                f"Linear: init={init!r} is not a known scheme; accepted: {', '.join(INIT_SCHEMES)}."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.replicas = replicas
        self.init = init
        if replicas is None:
            if not (generator is None or isinstance(generator, torch.Generator)):
                raise TypeError("Linear: without replicas, generator must be one torch.Generator.")
            self.weight, self.bias = init_linear(in_features, out_features, init, generator, dtype)
        else:
            if generator is None or isinstance(generator, torch.Generator):
                gens = [generator] * replicas
            else:
                gens = list(generator)
                if len(gens) != replicas:
                    raise ValueError(
                        f"Linear: {len(gens)} generators given for replicas={replicas}; "
                        "expected one generator per replica (or a single one)."
                    )
            pairs = [init_linear(in_features, out_features, init, g, dtype) for g in gens]
            self.weight = torch.stack([w for w, _ in pairs])
            self.bias = torch.stack([b for _, b in pairs])
        self.grad_weight = torch.zeros_like(self.weight)
        self.grad_bias = torch.zeros_like(self.bias)
        self._x: Tensor | None = None

    def _check_input(self, x: Tensor) -> None:
        want = 2 if self.replicas is None else 3
        if (
            x.dim() != want
            or x.shape[-1] != self.in_features
            or (self.replicas is not None and x.shape[0] != self.replicas)
        ):
            expected = (
                f"[B, {self.in_features}]"
                if self.replicas is None
                else f"[{self.replicas}, B, {self.in_features}] (replicas, batch, features)"
            )
            raise ValueError(f"{self!r}: got input of shape {list(x.shape)}; expected {expected}.")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        self._x = x
        if self.replicas is None:
            return torch.addmm(self.bias, x, self.weight.t())
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def backward(self, grad_out: Tensor) -> Tensor:
        x = self._need_saved(self._x)
        if grad_out.shape[:-1] != x.shape[:-1] or grad_out.shape[-1] != self.out_features:
            raise ValueError(
                f"{self!r}: backward got grad_out of shape {list(grad_out.shape)}; expected "
                f"{list(x.shape[:-1]) + [self.out_features]} to match the forward input."
            )
        # Gradients accumulate, as in torch; zero_grad() resets them.
        if self.replicas is None:
            self.grad_weight.addmm_(grad_out.t(), x)
            self.grad_bias.add_(grad_out.sum(0))
            return grad_out.mm(self.weight)
        self.grad_weight.baddbmm_(grad_out.transpose(1, 2), x)
        self.grad_bias.add_(grad_out.sum(1))
        return torch.bmm(grad_out, self.weight)

    def params(self) -> list[Param]:
        return [(self.weight, self.grad_weight), (self.bias, self.grad_bias)]

    def extra_repr(self) -> str:
        r = "" if self.replicas is None else f", replicas={self.replicas}"
        return f"in_features={self.in_features}, out_features={self.out_features}{r}"
