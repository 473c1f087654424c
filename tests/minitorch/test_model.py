"""The report's 2-25-25-25-2 test model against torch.nn, replica equivalence, errors."""

from __future__ import annotations

import pytest
import torch

import minitorch as mt

SIZES = (2, 25, 25, 25, 2)
ACTS = ("tanh", "relu", "sigmoid")
TORCH_ACT = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}


def torch_copy(model: mt.Sequential, dtype) -> torch.nn.Sequential:
    layers = []
    for m in model.modules:
        if isinstance(m, mt.Linear):
            lin = torch.nn.Linear(m.in_features, m.out_features, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(m.weight)
                lin.bias.copy_(m.bias)
            layers.append(lin)
        else:
            layers.append(TORCH_ACT[type(m).__name__.lower()]())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_test_model_gradients_and_sgd_step_equal_torch_nn(dtype, tol):
    model = mt.mlp(SIZES, ACTS, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ref = torch_copy(model, dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(25, 2, generator=gen, dtype=dtype)
    y = torch.rand(25, 2, generator=gen, dtype=dtype)

    loss = mt.MSE()
    value = loss(model(x), y)
    model.zero_grad()
    model.backward(loss.backward())
    with torch.enable_grad():
        ref_value = torch.nn.MSELoss()(ref(x), y)
        ref_value.backward()
    assert abs(value.item() - ref_value.item()) <= tol
    for (_, grad), p in zip(model.params(), ref.parameters(), strict=True):
        assert (grad - p.grad).abs().max().item() <= tol

    mt.SGD(model.params(), lr=0.05).step()
    torch.optim.SGD(ref.parameters(), lr=0.05).step()
    for (param, _), p in zip(model.params(), ref.parameters(), strict=True):
        assert (param - p.detach()).abs().max().item() <= tol


def replica_inputs(R, steps, gen):
    return [
        (torch.rand(R, 25, 2, generator=gen), torch.rand(R, 25, 2, generator=gen))
        for _ in range(steps)
    ]


def test_replica_r_equals_a_single_model_from_the_same_seed():
    R, steps = 5, 30
    seeds = [3, 1, 4, 1, 5]
    lrs = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.2])
    batched = mt.mlp(
        SIZES, ("tanh",) * 3, replicas=R, generator=[mt.seeded_generator(s, "init") for s in seeds]
    )
    loss_b = mt.MSE(replicas=R)
    opt_b = mt.SGD(batched.params(), lrs)
    data = replica_inputs(R, steps, torch.Generator().manual_seed(9))
    for x, y in data:
        losses = loss_b(batched(x), y)
        opt_b.zero_grad()
        batched.backward(loss_b.backward())
        opt_b.step()
    final_out = batched(data[0][0])

    for r, seed in enumerate(seeds):
        single = mt.mlp(SIZES, ("tanh",) * 3, generator=mt.seeded_generator(seed, "init"))
        loss_s = mt.MSE()
        opt_s = mt.SGD(single.params(), float(lrs[r]))
        for x, y in data:
            last = loss_s(single(x[r]), y[r])
            opt_s.zero_grad()
            single.backward(loss_s.backward())
            opt_s.step()
        assert abs(last.item() - losses[r].item()) <= 1e-6
        for (pb, gb), (ps, gs) in zip(batched.params(), single.params(), strict=True):
            assert (pb[r] - ps).abs().max().item() <= 1e-6
            assert (gb[r] - gs).abs().max().item() <= 1e-6
        assert (final_out[r] - single(data[0][0][r])).abs().max().item() <= 1e-6


def test_replica_init_depends_only_on_its_own_seed():
    alone = mt.Linear(2, 25, generator=mt.seeded_generator(7, "init"))
    many = mt.Linear(
        2, 25, replicas=110, generator=[mt.seeded_generator(s, "init") for s in range(110)]
    )
    assert torch.equal(many.weight[7], alone.weight)
    assert torch.equal(many.bias[7], alone.bias)
    assert not torch.equal(many.weight[6], alone.weight)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: mt.Linear(2, 25)(torch.zeros(4, 3)),
            r"Linear\(in_features=2, out_features=25\): got input of shape \[4, 3\]; "
            r"expected \[B, 2\]",
        ),
        (
            lambda: mt.Linear(2, 25, replicas=3)(torch.zeros(2, 4, 2)),
            r"replicas=3\): got input of shape \[2, 4, 2\]; expected \[3, B, 2\]",
        ),
        (
            lambda: mt.Linear(2, 25).backward(torch.zeros(4, 25)),
            r"Linear\(in_features=2, out_features=25\): backward\(\) was called before forward",
        ),
        (
            lambda: mt.Tanh().backward(torch.zeros(4, 25)),
            r"Tanh\(\): backward\(\) was called before forward",
        ),
        (lambda: mt.MSE().backward(), r"MSE: backward\(\) was called before forward"),
        (
            lambda: mt.MSE()(torch.zeros(4, 2), torch.zeros(4, 3)),
            r"MSE: pred has shape \[4, 2\] but target has shape \[4, 3\]; expected the same shape",
        ),
        (
            lambda: mt.MAE(replicas=2)(torch.zeros(4, 2), torch.zeros(4, 2)),
            r"MAE\(replicas=2\): pred has shape \[4, 2\]; expected \[2, B, O\]",
        ),
        (
            lambda: mt.SGD(mt.Linear(2, 2).params(), 0.0),
            r"SGD: lr=0.0 is not a valid learning rate; expected a finite number > 0",
        ),
        (lambda: mt.SGD(mt.Linear(2, 2).params(), -0.1), r"lr=-0.1 is not a valid"),
        (
            lambda: mt.SGD(mt.Linear(2, 2, replicas=2).params(), torch.tensor([0.1, -1.0])),
            r"SGD: lr tensor \[0.1.*-1.0\] is not accepted; expected a 1-D tensor of finite",
        ),
        (
            lambda: mt.Linear(2, 2, init="kaiming"),
            r"Linear: init='kaiming' is not a known scheme; accepted: torch, xavier, normal",
        ),
        (
            lambda: mt.mlp((2, 25, 2), ("tanh", "relu")),
            r"mlp: 2 activations \['tanh', 'relu'\] for sizes \[2, 25, 2\]; expected one per",
        ),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises((ValueError, RuntimeError, TypeError), match=message):
        call()


def test_sgd_per_replica_rate_needs_the_replica_axis():
    with pytest.raises(ValueError, match=r"3 per-replica learning rates but a parameter has shape"):
        mt.SGD(mt.Linear(2, 2, replicas=2).params(), torch.full((3,), 0.1))
