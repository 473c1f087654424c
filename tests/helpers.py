"""One shared oracle: a minitorch module must equal a torch expression under torch.autograd."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import minitorch as mt

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


class LossAsModule(mt.Module):
    """Adapts a loss (forward(pred, target), backward()) to the module protocol for the oracle."""

    def __init__(self, loss: mt.Loss, target: Tensor) -> None:
        self.loss, self.target = loss, target

    def forward(self, x: Tensor) -> Tensor:
        return self.loss(x, self.target)

    def backward(self, grad_out: Tensor) -> Tensor:
        g = self.loss.backward()
        # d(sum_r w_r L_r)/dpred = w_r dL_r/dpred: broadcast the upstream weight per replica.
        return g * grad_out.reshape(grad_out.shape + (1,) * (g.dim() - grad_out.dim()))


def assert_matches_torch(
    module: mt.Module,
    torch_fn: Callable[[Tensor, Sequence[Tensor]], Tensor],
    x: Tensor,
    *,
    grad_out: Tensor | None = None,
    atol: float | None = None,
    rtol: float = 0.0,
) -> None:
    """Forward value, gradient wrt input and wrt each parameter agree with torch.autograd.

    `torch_fn(x, params)` computes the same function from leaf copies of `module.params()`.
    """
    atol = TOLERANCE[x.dtype] if atol is None else atol
    x_ref = x.detach().clone().requires_grad_(True)
    params_ref = [p.detach().clone().requires_grad_(True) for p, _ in module.params()]
    with torch.enable_grad():
        y_ref = torch_fn(x_ref, params_ref)
        if grad_out is None:
            gen = torch.Generator().manual_seed(1234)
            grad_out = torch.randn(y_ref.shape, generator=gen, dtype=y_ref.dtype)
        y_ref.backward(grad_out)

    with torch.no_grad():
        module.zero_grad()
        y = module.forward(x.clone())
        gx = module.backward(grad_out.clone())

    def close(name: str, got: Tensor, want: Tensor) -> None:
        assert got.shape == want.shape, f"{module!r} {name}: shape {got.shape} != {want.shape}"
        assert torch.isfinite(got).all(), f"{module!r} {name}: non-finite values {got}"
        tol = atol + rtol * want.abs().max().item()
        diff = (got - want).abs().max().item() if got.numel() else 0.0
        assert diff <= tol, f"{module!r} {name}: max abs diff {diff:.3e} > {tol:.1e}"

    close("forward", y, y_ref.detach())
    close("grad wrt input", gx, x_ref.grad)
    for i, ((_, grad), p_ref) in enumerate(zip(module.params(), params_ref, strict=True)):
        close(f"grad wrt param {i}", grad, p_ref.grad)
