"""The fused fast path equals the general modules + SGD, step for step."""

from __future__ import annotations

import pytest
import torch

import minitorch as mt


def build(acts, replicas, dtype, loss_name, lr):
    gen = [mt.seeded_generator(s, "init") for s in range(replicas or 1)]
    model = mt.mlp(
        (2, 9, 7, 8, 2), acts, replicas=replicas, dtype=dtype, generator=gen if replicas else gen[0]
    )
    loss = mt.LOSSES[loss_name](replicas=replicas)
    return model, loss, mt.SGD(model.params(), lr)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("replicas", [None, 1, 4])
@pytest.mark.parametrize("acts", [("tanh",) * 3, ("relu", "sigmoid", "tanh")])
@pytest.mark.parametrize("loss_name", ["mse", "mae"])
@pytest.mark.parametrize("kernel", mt.fused.KERNELS)
def test_fused_step_equals_modules(dtype, tol, replicas, acts, loss_name, kernel):
    lr = 0.3 if replicas is None else torch.linspace(0.1, 0.5, replicas, dtype=dtype)
    ref_model, ref_loss, ref_opt = build(acts, replicas, dtype, loss_name, lr)
    model, loss, opt = build(acts, replicas, dtype, loss_name, lr)
    if kernel == "native" and dtype == torch.float64:
        with pytest.raises(ValueError, match=r"float32 only and the model is torch.float64"):
            mt.FusedMLPStep(model, loss, opt, kernel=kernel)
        return
    fused = mt.FusedMLPStep(model, loss, opt, kernel=kernel)
    gen = torch.Generator().manual_seed(0)
    lead = () if replicas is None else (replicas,)
    sums = torch.zeros(lead or (1,), dtype=dtype)
    ref_sums = torch.zeros_like(sums)
    for batch in [5, 5, 3, 5, 3, 5]:  # two batch sizes: the buffers are cached per size
        x = torch.rand(*lead, batch, 2, generator=gen, dtype=dtype)
        y = torch.rand(*lead, batch, 2, generator=gen, dtype=dtype)
        ref_sums += ref_loss(ref_model(x), y)
        ref_opt.zero_grad()
        ref_model.backward(ref_loss.backward())
        ref_opt.step()
        fused.step(x, y, sums)
        for (p, g), (rp, rg) in zip(model.params(), ref_model.params(), strict=True):
            assert (g - rg).abs().max().item() <= tol
            assert (p - rp).abs().max().item() <= tol
    assert (sums - ref_sums).abs().max().item() <= tol * 10
    # The model itself stays usable: the fused path shares its tensors.
    x = torch.rand(*lead, 4, 2, generator=gen, dtype=dtype)
    assert (model(x) - ref_model(x)).abs().max().item() <= tol
    assert (fused.forward(x) - ref_model(x)).abs().max().item() <= tol


def test_kernels_agree_on_the_report_model_over_many_steps():
    runs = {}
    for kernel in ("native", "numpy", "torch"):
        model, loss, opt = build(("tanh",) * 3, 6, torch.float32, "mse", torch.full((6,), 0.05))
        fused = mt.FusedMLPStep(model, loss, opt, kernel=kernel)
        gen = torch.Generator().manual_seed(1)
        for _ in range(200):
            fused.step(torch.rand(6, 25, 2, generator=gen), torch.rand(6, 25, 2, generator=gen))
        runs[kernel] = [p.clone() for p, _ in model.params()]
    for kernel in ("native", "numpy"):
        for a, b in zip(runs[kernel], runs["torch"], strict=True):
            assert (a - b).abs().max().item() <= 1e-5


def test_unknown_kernel_is_refused():
    model, loss, opt = build(("tanh",) * 3, None, torch.float32, "mse", 0.1)
    with pytest.raises(
        ValueError, match=r"kernel='cuda' is not known; accepted: auto, native, numpy, torch"
    ):
        mt.FusedMLPStep(model, loss, opt, kernel="cuda")


def test_fused_refuses_other_shapes():
    model = mt.Sequential(mt.Linear(2, 3), mt.Linear(3, 2))
    with pytest.raises(TypeError, match=r"module 1 is Linear\(in_features=3, out_features=2\)"):
        mt.FusedMLPStep(model, mt.MSE(), mt.SGD(model.params(), 0.1))
