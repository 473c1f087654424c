"""Losses: forward(pred, target) -> loss, backward() -> gradient wrt pred."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor


class Loss:
    """Mean over the elements of one model's prediction.

    Without replicas pred is [B, O] and the loss a scalar; with the replica axis pred is
    [R, B, O], the loss is [R] and each replica's gradient is scaled by its own element count,
    so replica r equals a single model.

    `kind` names the loss for the fused fast path (minitorch.fast), None where it has none.
    """

    kind: ClassVar[str | None] = None

    def __init__(self, *, replicas: int | None = None) -> None:
        if replicas is not None and (not isinstance(replicas, int) or replicas <= 0):
            raise ValueError(
                f"{type(self).__name__}: replicas={replicas!r}; "
                "expected None or a positive integer."
            )
        self.replicas = replicas
        self._diff: Tensor | None = None
        self._n = 0

    def _prepare(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: pred has shape {list(pred.shape)} but target has shape "
                f"{list(target.shape)}; expected the same shape."
            )
        if self.replicas and (pred.dim() != 3 or pred.shape[0] != self.replicas):
            raise ValueError(
                f"{self!r}: pred has shape {list(pred.shape)}; "
                f"expected [{self.replicas}, B, O] (replicas, batch, outputs)."
            )
        self._diff = pred - target
        self._n = pred[0].numel() if self.replicas else pred.numel()
        return self._diff

    def _saved(self) -> Tensor:
        if self._diff is None:
            raise RuntimeError(
                f"{type(self).__name__}: backward() was called before forward(pred, target)."
            )
        return self._diff

    def _reduce(self, values: Tensor) -> Tensor:
        if self.replicas:
            return values.flatten(1).sum(1) / self._n
        return values.sum() / self._n

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.forward(pred, target)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def backward(self) -> Tensor:
        raise NotImplementedError

    def params(self) -> list:
        return []

    def __repr__(self) -> str:
        r = f"replicas={self.replicas}" if self.replicas else ""
        return f"{type(self).__name__}({r})"


class MSE(Loss):
    """mean((s - y)^2) over all elements; gradient 2 (s - y) / N. Same as torch.nn.MSELoss().

    The report's forward returned the squared Frobenius norm (a sum) while its backward divided
    by N: forward and backward disagreed by a factor N. Here they agree.
    """

    kind = "mse"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        d = self._prepare(pred, target)
        return self._reduce(d * d)

    def backward(self) -> Tensor:
        return self._saved() * (2.0 / self._n)


class MAE(Loss):
    """mean(|s - y|) over all elements; gradient sign(s - y) / N. Same as torch.nn.L1Loss()."""

    kind = "mae"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self._reduce(self._prepare(pred, target).abs())

    def backward(self) -> Tensor:
        return self._saved().sign() * (1.0 / self._n)


LOSSES: dict[str, type[Loss]] = {"mse": MSE, "mae": MAE}
