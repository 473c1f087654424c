"""`FusedMLPStep`: SGD on an MLP with far fewer Python calls, through one of two kernels.

`Sequential.forward/backward` + `SGD.step` allocate fresh tensors and re-check shapes at every
call; for the report's tiny model that overhead is most of the time. The fused step performs,
per batch and for a whole epoch, the forward, the loss gradient, the backward and the SGD update
on the model's own parameter and gradient tensors, and is tested to give the same parameters as
the modules + `SGD.step` (tests/minitorch/test_fused.py).

It sees the model only through `mlp_parts` (the modules' declared `kind`s) and the optimizer only
through `SGD.replica_lrs` and `SGD.step`. The kernel is chosen once, at construction:
- "native" (native_kernel.py): compiled C++, one call per epoch for all replicas; float32 only.
- "torch" (torch_kernel.py): torch.bmm / baddbmm, the reference; any dtype, no compiler needed.
"auto", the default, takes "native" where it can be built for the model, else "torch" (with a
warning for a float32 model, which would have used the native kernel).
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from torch import Tensor

from minitorch.fast import native
from minitorch.fast.native_kernel import NativeKernel
from minitorch.fast.parts import loss_kind as fused_loss_kind
from minitorch.fast.parts import mlp_parts
from minitorch.fast.torch_kernel import TorchKernel
from minitorch.losses import Loss
from minitorch.module import Sequential
from minitorch.optim import SGD

KERNELS = ("auto", "native", "torch")


class Kernel(Protocol):
    """What FusedMLPStep asks of a kernel; inputs are [R, rows, f] (R = 1 without replicas)."""

    name: str

    def step(self, x: Tensor, y: Tensor, loss_sum: Tensor | None) -> None: ...

    def epoch(
        self, x: Tensor, y: Tensor, batch_size: int, loss_sum: Tensor | None, order: Tensor | None
    ) -> None: ...

    def forward(self, x: Tensor) -> Tensor: ...


class FusedMLPStep:
    """SGD steps for `Sequential(Linear, act, Linear, act, ..., Linear)` with MSE or MAE.

    Inputs are [B, in] for a model without replicas and [R, B, in] with them. `step` (one
    batch) and `epoch` (all batches of an epoch) update the model's parameters in place, leave
    the last step's gradients in the model's gradient tensors (as backward would), and add each
    replica's batch losses to `loss_sum` if given; `forward` evaluates.
    """

    def __init__(
        self,
        model: Sequential,
        loss: Loss,
        optimizer: SGD,
        *,
        kernel: str = "auto",
        threads: int | None = None,
    ) -> None:
        """`threads`: how many threads the native kernel splits the replicas over (None: torch's
        intra-op thread count at each call). Pass it, and run torch itself on one thread, when
        the native kernel does the heavy work: torch's idle OpenMP threads spin for a while
        after each parallel op and would take cycles from the kernel's threads."""
        if kernel not in KERNELS:
            raise ValueError(
                f"FusedMLPStep: kernel={kernel!r} is not known; accepted: {', '.join(KERNELS)}."
            )
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise ValueError(f"FusedMLPStep: threads={threads!r}; expected an integer >= 1.")
        for method in ("replica_lrs", "step"):
            if not callable(getattr(optimizer, method, None)):
                raise TypeError(
                    f"FusedMLPStep: optimizer {optimizer!r} has no {method}(); expected a "
                    "minitorch.SGD (the fused step performs SGD's update)."
                )
        self.kernel = kernel  # as asked; kernel_used says what runs
        self.parts = mlp_parts(model, "FusedMLPStep")
        self.loss_kind = fused_loss_kind(loss, "FusedMLPStep")
        self.optimizer = optimizer
        self.replicas = self.parts.replicas
        self.tanh_grad = self.parts.tanh_grad
        self._threads = threads
        self._layout = "auto"
        self._kernel: Kernel = self._choose(kernel)

    def _choose(self, kernel: str) -> Kernel:
        """The kernel that will do all the work, chosen here, once."""
        if kernel == "torch":
            return TorchKernel(self.parts, self.loss_kind, self.optimizer.step)
        try:
            return NativeKernel(
                self.parts, self.loss_kind, self.optimizer.replica_lrs, self._threads
            )
        except native.NativeUnavailable as e:
            problem = str(e)
        if kernel == "native":
            raise ValueError(f"FusedMLPStep: kernel='native' cannot be used: {problem}.")
        if self.parts.dtype == torch.float32:  # float64 models are meant for torch: no noise
            warnings.warn(
                f"FusedMLPStep: the native kernel is unavailable ({problem}); using the "
                "slower torch kernel.",
                RuntimeWarning,
                stacklevel=3,  # the caller of FusedMLPStep(...)
            )
        return TorchKernel(self.parts, self.loss_kind, self.optimizer.step)

    @property
    def kernel_used(self) -> str:
        """The kernel doing the work: "native" or "torch" (fixed at construction)."""
        return self._kernel.name

    @property
    def native(self) -> bool:
        """Whether the native kernel does the work."""
        return self._kernel.name == "native"

    @property
    def threads(self) -> int | None:
        """The native kernel's thread count (None: torch's at each call); torch ignores it."""
        return self._threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        self._threads = value
        if isinstance(self._kernel, NativeKernel):
            self._kernel.threads = value

    @property
    def native_layout(self) -> str:
        """How the native kernel lays the replicas out (native_kernel.NATIVE_LAYOUTS, the same
        bits in each): "auto", or "rows" / "lanes" for all replicas, to compare them. Checked
        at the next epoch; the torch kernel ignores it."""
        return self._layout

    @native_layout.setter
    def native_layout(self, value: str) -> None:
        self._layout = value
        if isinstance(self._kernel, NativeKernel):
            self._kernel.layout = value

    def forward(self, x: Tensor) -> Tensor:
        """The model's output for x ([B, in], or [R, B, in] with replicas).

        With the torch kernel the result lives in cached buffers, valid until the next call.
        """
        out = self._kernel.forward(x.unsqueeze(0) if self.replicas is None else x)
        return out[0] if self.replicas is None else out

    def nonfinite(self) -> Tensor:
        """[R] bool ([1] without replicas): which replicas have an inf or NaN weight or bias,
        e.g. after a diverging step. The native kernel scans them in one call."""
        if isinstance(self._kernel, NativeKernel):
            return self._kernel.nonfinite()
        rows = [t.reshape(self.replicas or 1, -1) for t in (*self.parts.weights,
                                                            *self.parts.biases)]  # fmt: skip
        return ~torch.isfinite(torch.cat(rows, dim=1)).all(dim=1)

    def step(self, x: Tensor, y: Tensor, loss_sum: Tensor | None = None) -> None:
        """Forward, loss, backward and the SGD update for one batch."""
        if self.replicas is None:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        self._kernel.step(x, y, loss_sum)

    def epoch(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        loss_sum: Tensor | None = None,
        order: Tensor | None = None,
    ) -> None:
        """SGD over the rows of x and y, `batch_size` rows per step (the last may be fewer): the
        same as `step` on each batch in turn. x is [R, N, in] ([N, in] without replicas).

        `order` ([R, M] int64, [M] without replicas) lists the rows each replica visits, e.g.
        its shuffle for this epoch; without it the rows are visited as they are. The native
        kernel reads the rows through it, so no shuffled copy of the data is made.
        """
        if batch_size < 1:
            raise ValueError(f"FusedMLPStep.epoch: batch_size={batch_size!r}; expected >= 1.")
        if self.replicas is None:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
            order = None if order is None else order.unsqueeze(0)
        if order is not None and (
            order.dim() != 2 or order.shape[0] != x.shape[0] or order.dtype != torch.int64
        ):
            raise ValueError(
                f"FusedMLPStep.epoch: order is {order.dtype} of shape {list(order.shape)}; "
                f"expected int64 of shape [{x.shape[0]}, rows] (one row order per replica)."
            )
        self._kernel.epoch(x, y, batch_size, loss_sum, order)
