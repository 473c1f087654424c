"""Stochastic gradient descent: SGD owns the update of the modules' parameters.

Layers only fill gradients; `SGD.step` changes the parameters, p <- p - lr * grad. The fused
fast path (`minitorch.fast.FusedMLPStep`) performs this same SGD update inside its kernel: for
a whole epoch, per batch, it fuses the forward, the loss gradient, the backward and the SGD
update (the native kernel in one compiled loop, with the rates of `SGD.replica_lrs`; the torch
kernel calls `SGD.step` after its backward). tests/minitorch/test_fused.py checks that it gives
the parameters of the modules + `SGD.step`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from minitorch.module import Param


class SGD:
    """p <- p - lr * grad for every (param, grad) pair.

    `lr` is a positive float, or a 1-D tensor with one rate per replica, broadcast over each
    parameter's leading (replica) dimension.
    """

    def __init__(self, params: Sequence[Param], lr: float | Tensor) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list; pass model.params().")
        self._params = [p for p, _ in self.params]
        self._grads = [g for _, g in self.params]
        self.set_lr(lr)

    def set_lr(self, lr: float | Tensor) -> None:
        """Change the learning rate(s); per-replica rates may be 0 to freeze a replica."""
        if isinstance(lr, Tensor):
            bad = ~torch.isfinite(lr) | (lr < 0)
            if lr.dim() != 1 or bool(bad.any()) or bool((lr == 0).all()):
                raise ValueError(
                    f"SGD: lr tensor {lr.tolist() if lr.numel() <= 8 else list(lr.shape)} is "
                    "not accepted; expected a 1-D tensor of finite non-negative rates, one per "
                    "replica, not all zero."
                )
            R = lr.shape[0]
            for p in self._params:
                if p.dim() < 2 or p.shape[0] != R:
                    raise ValueError(
                        f"SGD: {R} per-replica learning rates but a parameter has shape "
                        f"{list(p.shape)}; expected leading dimension {R} (the replica axis)."
                    )
            # Negated and shaped once per parameter so that step() is a single fused call.
            self._neg_lr = [
                (-lr).to(p.dtype).view(-1, *([1] * (p.dim() - 1))) for p in self._params
            ]
            self.lr: float | Tensor = lr
        else:
            if (
                isinstance(lr, bool)
                or not isinstance(lr, (int, float))
                or not (math.isfinite(lr) and lr > 0)
            ):
                raise ValueError(
                    f"SGD: lr={lr!r} is not a valid learning rate; expected a finite number > 0 "
                    "(or a tensor of one rate per replica)."
                )
            self._neg_lr = None
            self.lr = float(lr)

    def replica_lrs(self, replicas: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The learning rate of each of `replicas` replicas, a contiguous [replicas] tensor (a
        float lr is every replica's): for a fused kernel that performs this update itself."""
        if isinstance(self.lr, Tensor):
            if self.lr.shape[0] != replicas:
                raise ValueError(
                    f"SGD: {self.lr.shape[0]} per-replica learning rates were asked for "
                    f"{replicas} replicas; expected one rate per replica."
                )
            return self.lr.to(dtype).contiguous()
        return torch.full((replicas,), self.lr, dtype=dtype)

    def step(self) -> None:
        """p <- p - lr * grad for every parameter, in one fused call."""
        if self._neg_lr is None:
            torch._foreach_add_(self._params, self._grads, alpha=-self.lr)
        else:
            torch._foreach_addcmul_(self._params, self._grads, self._neg_lr)

    def zero_grad(self) -> None:
        """Reset every gradient to 0 (backward accumulates, as in torch)."""
        torch._foreach_zero_(self._grads)
