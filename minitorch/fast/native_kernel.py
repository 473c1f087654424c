"""The native kernel's Python side: checks the inputs and calls the compiled library.

The library (minitorch/fast/csrc, built by minitorch/fast/native.py) trains 8 replicas at once
with one replica per vector lane (no padding whatever the layer widths), each layer's three
products as register-blocked FMA loops with the activation derivative and the SGD update fused
in; a remainder of fewer than 6 replicas runs one replica at a time with the batch rows blocked
instead ("rows" layout). Both layouts give the same bits, at any thread count. One call per
epoch for all replicas, split over threads. float32 only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from minitorch.fast import native
from minitorch.fast.parts import MLPParts

NATIVE_LAYOUTS = ("auto", "rows", "lanes")  # mt_train's layout argument, in its order


class NativeKernel:
    """Epochs and forwards of an MLP through the compiled library, on [R, N, f] inputs.

    `rates(R)` gives the replicas' learning rates at each call (`SGD.replica_lrs`): the kernel
    performs SGD's update itself. `threads` (None: torch's thread count at each call) and
    `layout` (NATIVE_LAYOUTS) may be changed between calls.
    """

    name = "native"

    def __init__(
        self,
        parts: MLPParts,
        loss_kind: str,
        rates: Callable[[int], Tensor],
        threads: int | None = None,
    ) -> None:
        """Builds or loads the library; raises native.NativeUnavailable saying why it cannot."""
        if parts.dtype != torch.float32:
            raise native.NativeUnavailable(
                f"it computes in float32 only and the model is {parts.dtype}"
            )
        if not all(t.is_contiguous() for t in (*parts.weights, *parts.biases)):
            raise native.NativeUnavailable("the model's parameters are not contiguous")
        self.lib = native.load(parts.sizes, parts.activations, loss_kind, parts.tanh_grad)
        self.parts = parts
        self.rates = rates
        self.threads = threads
        self.layout = "auto"
        self._W = native.pointers(parts.weights)
        self._b = native.pointers(parts.biases)
        self._gW = native.pointers(parts.grad_weights)
        self._gb = native.pointers(parts.grad_biases)

    def _threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()

    def _inputs(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x and y checked against the model, as contiguous float32 tensors."""
        R = self.parts.replicas or 1
        for name, t, n in (("x", x, self.parts.sizes[0]), ("y", y, self.parts.sizes[-1])):
            if t is not None and (t.dim() != 3 or t.shape[0] != R or t.shape[2] != n):
                raise ValueError(
                    f"FusedMLPStep: {name} has shape {list(t.shape)}; expected "
                    f"[{R}, rows, {n}] (one block of rows per replica)."
                )
        if y is not None and y.shape[1] != x.shape[1]:
            raise ValueError(
                f"FusedMLPStep: x has {x.shape[1]} rows and y {y.shape[1]}; they must match."
            )
        return x.contiguous().to(torch.float32), None if y is None else y.contiguous().float()

    def forward(self, x: Tensor) -> Tensor:
        """The output for x [R, N, in], a new tensor."""
        xc, _ = self._inputs(x)
        out = torch.empty(xc.shape[0], xc.shape[1], self.parts.sizes[-1])
        rc = self.lib.mt_forward(xc.shape[0], xc.shape[1], xc.data_ptr(), self._W, self._b,
                                 out.data_ptr(), self._threads())  # fmt: skip
        _check_rc(rc)
        return out

    def nonfinite(self) -> Tensor:
        """[R] bool: which replicas have an inf or NaN weight or bias (one pass in C)."""
        bad = torch.empty(self.parts.replicas or 1, dtype=torch.uint8)
        self.lib.mt_nonfinite(bad.shape[0], self._W, self._b, bad.data_ptr())
        return bad.bool()

    def step(self, x: Tensor, y: Tensor, loss_sum: Tensor | None) -> None:
        """One batch: an epoch whose batch is all of x's rows."""
        self.epoch(x, y, x.shape[1], loss_sum, None)

    def epoch(
        self, x: Tensor, y: Tensor, batch_size: int, loss_sum: Tensor | None, order: Tensor | None
    ) -> None:
        """Forward, loss gradient, backward and SGD update per batch, for the whole epoch, in
        one call; rows are read through `order` ([R, M] int64) if given, without a copy."""
        xc, yc = self._inputs(x, y)
        R, N = xc.shape[0], xc.shape[1]
        order = None if order is None else order.contiguous()
        M = N if order is None else order.shape[1]
        if M == 0:
            return
        if self.layout not in NATIVE_LAYOUTS:
            raise ValueError(
                f"FusedMLPStep: native_layout={self.layout!r} is not known; accepted: "
                f"{', '.join(NATIVE_LAYOUTS)}."
            )
        rates = self.rates(R)
        losses = torch.zeros(R, dtype=torch.float64) if loss_sum is not None else None
        rc = self.lib.mt_train(
            R, N, M, batch_size, xc.data_ptr(), yc.data_ptr(),
            None if order is None else order.data_ptr(), self._W, self._b, self._gW, self._gb,
            rates.data_ptr(), None if losses is None else losses.data_ptr(), self._threads(),
            NATIVE_LAYOUTS.index(self.layout),
        )  # fmt: skip
        if rc == 3:
            raise IndexError(f"FusedMLPStep.epoch: order has indices outside [0, {N}).")
        _check_rc(rc)
        if loss_sum is not None:
            loss_sum.add_(losses.to(loss_sum.dtype))


def _check_rc(rc: int) -> None:
    if rc == 1:
        raise MemoryError("FusedMLPStep: the native kernel could not allocate its buffers.")
    if rc != 0:
        raise RuntimeError(f"FusedMLPStep: the native kernel refused its inputs (code {rc}).")
