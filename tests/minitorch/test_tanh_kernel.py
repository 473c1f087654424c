"""The native kernel's tanh (csrc/mlp.hpp's vtanh) against torch.tanh in float64.

A 1-1-1 tanh model with weights 1 and biases 0 outputs exactly the kernel's tanh of its input
(each product is one FMA with 1, each sum starts from 0), so its forward shows vtanh's values
on a dense grid: the error bound its comment states, exact +-1 for large |x|, NaN kept, accurate
near 0. Both training layouts call the same vtanh (test_native checks they agree bit for bit).
"""

from __future__ import annotations

import math

import pytest
import torch

import minitorch as mt
from minitorch.fast import native

MAX_ABS_ERROR = 3e-7  # torch's own float32 tanh (2 sigmoid(2x) - 1) is 1.8e-7 from the truth


def kernel_tanh(x: torch.Tensor) -> torch.Tensor:
    """vtanh(x) for a 1-D float32 x, through the native forward of a 1-1-1 identity model."""
    model = mt.mlp((1, 1, 1), ("tanh",), replicas=1)
    for layer in (model.modules[0], model.modules[2]):
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    fused = mt.FusedMLPStep(model, mt.LOSSES["mse"](replicas=1), mt.SGD(model.params(), 0.1),
                            kernel="native")  # fmt: skip
    assert fused.kernel_used == "native"
    return fused.forward(x.reshape(1, -1, 1)).reshape(-1)


@pytest.fixture(scope="module")
def native_built():
    try:
        native.load((1, 1, 1), ("tanh",), "mse")
    except native.NativeUnavailable as e:  # pragma: no cover - machines without a compiler
        pytest.skip(f"no native kernel: {e}")


def test_kernel_tanh_is_within_its_bound_on_a_dense_grid(native_built):
    x = torch.cat([torch.linspace(-12, 12, 2_000_001), torch.linspace(-1e-2, 1e-2, 20_001)])
    got = kernel_tanh(x).double()
    want = torch.tanh(x.double())
    err = (got - want).abs()
    assert err.max().item() <= MAX_ABS_ERROR, x[err.argmax()].item()
    assert torch.equal(kernel_tanh(-x), -kernel_tanh(x))  # odd, bit for bit
    assert got.abs().max().item() <= 1.0


def test_kernel_tanh_is_exactly_one_far_out_and_keeps_nan(native_built):
    x = torch.tensor([8.0, 9.0, 20.0, 1e30, math.inf, -8.0, -50.0, -math.inf, math.nan, 0.0])
    got = kernel_tanh(x)
    assert got[:5].tolist() == [1.0] * 5
    assert got[5:8].tolist() == [-1.0] * 3
    assert math.isnan(got[8].item())
    assert got[9].item() == 0.0


def test_kernel_tanh_is_relatively_accurate_near_zero(native_built):
    x = torch.logspace(-30, -2, 5001, dtype=torch.float64).float()
    x = torch.cat([x, -x])
    rel = ((kernel_tanh(x).double() - torch.tanh(x.double())) / torch.tanh(x.double())).abs()
    assert rel.max().item() <= 4e-7, x[rel.argmax()].item()
