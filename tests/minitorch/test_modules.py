"""Every minitorch module against torch.autograd, through the one shared helper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import minitorch as mt
from tests.helpers import LossAsModule, assert_matches_torch

DTYPES = [torch.float64, torch.float32]


def linear_ref(x, params):
    w, b = params
    if w.dim() == 3:
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    return F.linear(x, w, b)


ACT_REF = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def loss_ref(name, target, replicas):
    fn = F.mse_loss if name == "mse" else F.l1_loss
    if replicas is None:
        return lambda x, _: fn(x, target)
    return lambda x, _: torch.stack([fn(x[r], target[r]) for r in range(x.shape[0])])


shapes = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 9),
        "n_in": st.integers(1, 7),
        "n_out": st.integers(1, 7),
        "replicas": st.one_of(st.none(), st.integers(1, 4)),
        "seed": st.integers(0, 2**31 - 1),
        "scale": st.sampled_from([1e-3, 1.0, 30.0]),
    }
)


def make_input(s, n, dtype):
    gen = torch.Generator().manual_seed(s["seed"])
    lead = [] if s["replicas"] is None else [s["replicas"]]
    return torch.randn(*lead, s["batch"], n, generator=gen, dtype=dtype) * s["scale"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", mt.INIT_SCHEMES)
@settings(max_examples=25, deadline=None)
@given(s=shapes)
def test_linear_matches_autograd(s, dtype, init):
    gen = torch.Generator().manual_seed(s["seed"])
    layer = mt.Linear(
        s["n_in"], s["n_out"], replicas=s["replicas"], init=init, generator=gen, dtype=dtype
    )
    x = make_input(s, s["n_in"], dtype)
    # Relative tolerance: products of inputs scaled by 30 carry proportionally larger rounding.
    assert_matches_torch(layer, linear_ref, x, rtol=1e-6 if dtype == torch.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(mt.ACTIVATIONS))
@settings(max_examples=25, deadline=None)
@given(s=shapes)
def test_activation_matches_autograd(s, dtype, name):
    x = make_input(s, s["n_in"], dtype)
    assert_matches_torch(mt.ACTIVATIONS[name](), lambda x, _: ACT_REF[name](x), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(mt.LOSSES))
@settings(max_examples=25, deadline=None)
@given(s=shapes)
def test_loss_matches_autograd(s, dtype, name):
    x = make_input(s, s["n_out"], dtype)
    target = make_input({**s, "seed": s["seed"] + 1, "scale": 1.0}, s["n_out"], dtype)
    loss = mt.LOSSES[name](replicas=s["replicas"])
    ref = loss_ref(name, target, s["replicas"])
    assert_matches_torch(LossAsModule(loss, target), ref, x, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("replicas", [None, 3])
@pytest.mark.parametrize("acts", [("tanh", "relu"), ("sigmoid", "tanh")])
def test_sequential_matches_autograd(dtype, replicas, acts):
    gen = torch.Generator().manual_seed(0)
    model = mt.mlp((2, 6, 5, 2), acts, replicas=replicas, generator=gen, dtype=dtype)

    def ref(x, params):
        h = x
        for i in range(3):
            h = linear_ref(h, params[2 * i : 2 * i + 2])
            if i < 2:
                h = ACT_REF[acts[i]](h)
        return h

    x = make_input({"replicas": replicas, "batch": 7, "seed": 3, "scale": 1.0}, 2, dtype)
    assert_matches_torch(model, ref, x)


EXTREMES = [1e4, -1e4, 88.0, -88.0, 50.0, -50.0, 0.0, 1e-30, -1e-30]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(mt.ACTIVATIONS))
@pytest.mark.parametrize("replicas", [None, 2])
def test_activation_extreme_inputs(dtype, name, replicas):
    x = torch.tensor(EXTREMES, dtype=dtype).repeat(3, 1)
    if replicas:
        x = x.expand(replicas, *x.shape).clone()
    assert_matches_torch(mt.ACTIVATIONS[name](), lambda x, _: ACT_REF[name](x), x)


def test_tanh_derivative_is_one_minus_square_not_the_reports():
    act = mt.Tanh()
    act.forward(torch.zeros(1, 1, dtype=torch.float64))
    # The report's 4 / (e^s + e^-s) gives 2 at s = 0; the true derivative is 1.
    assert act.backward(torch.ones(1, 1, dtype=torch.float64)).item() == 1.0


def report_tanh_ref(x, _):
    """Value tanh(s), gradient that of 4 arctan(tanh(s/2)), which is exactly 2 sech(s).

    The straight-through sum makes one torch expression with both, for the shared oracle.
    """
    g = 4 * torch.atan(torch.tanh(x / 2))
    return torch.tanh(x).detach() + (g - g.detach())


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(s=shapes)
def test_tanh_report_grad_matches_autograd_of_4_arctan_tanh_half(s, dtype):
    x = make_input(s, s["n_in"], dtype)
    assert_matches_torch(mt.Tanh(grad="report"), report_tanh_ref, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("replicas", [None, 2])
def test_tanh_report_grad_extreme_inputs(dtype, replicas):
    x = torch.tensor(EXTREMES, dtype=dtype).repeat(3, 1)
    if replicas:
        x = x.expand(replicas, *x.shape).clone()
    assert_matches_torch(mt.Tanh(grad="report"), report_tanh_ref, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_report_grad_is_the_reports_formula_and_not_the_exact_one(dtype):
    s = torch.tensor([0.0, 0.5, -1.0, 3.0, -6.0], dtype=dtype)
    report, exact = mt.Tanh(grad="report"), mt.Tanh()
    report.forward(s)
    exact.forward(s)
    got = report.backward(torch.ones_like(s))
    # As written in the report: grad * 4 / (e^s + e^-s); 2 at s = 0, where sech^2 gives 1.
    torch.testing.assert_close(got, 4 / (torch.exp(s) + torch.exp(-s)))
    assert got[0].item() == 2.0 and exact.backward(torch.ones_like(s))[0].item() == 1.0
    # Relative to the exact 1 - tanh^2 = sech^2 it is 2 cosh(s): ever larger with |s|. (Up to
    # |s| = 3: beyond, float32's 1 - t^2 keeps too few digits for a 1e-4 ratio.)
    ratio = got / exact.backward(torch.ones_like(s))
    torch.testing.assert_close(ratio[:4], 2 * torch.cosh(s[:4]), rtol=1e-4, atol=0)


def test_tanh_grad_is_checked_and_shown():
    with pytest.raises(ValueError, match=r"Tanh: grad='sech2' is not known; accepted: exact, rep"):
        mt.Tanh(grad="sech2")
    with pytest.raises(ValueError, match=r"mlp: tanh_grad='Report' is not known; accepted: exa"):
        mt.mlp((2, 3, 2), ("tanh",), tanh_grad="Report")
    model = mt.mlp((2, 3, 3, 2), ("tanh", "relu"), tanh_grad="report")
    assert [repr(m) for m in model.modules[1::2]] == ["Tanh(grad='report')", "ReLU()"]
    assert repr(mt.mlp((2, 3, 2), ("tanh",))[1]) == "Tanh()"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("replicas", [None, 3])
def test_sequential_with_report_tanh_grad_matches_autograd(dtype, replicas):
    gen = torch.Generator().manual_seed(0)
    acts = ("tanh", "relu", "tanh")
    model = mt.mlp(
        (2, 6, 5, 4, 2), acts, replicas=replicas, generator=gen, dtype=dtype, tanh_grad="report"
    )

    def ref(x, params):
        h = x
        for i in range(4):
            h = linear_ref(h, params[2 * i : 2 * i + 2])
            if i < 3:
                h = report_tanh_ref(h, None) if acts[i] == "tanh" else torch.relu(h)
        return h

    x = make_input({"replicas": replicas, "batch": 7, "seed": 3, "scale": 1.0}, 2, dtype)
    assert_matches_torch(model, ref, x)


def test_mse_forward_and_backward_agree_with_torch_mseloss():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
    target = torch.zeros(2, 2, dtype=torch.float64)
    loss = mt.MSE()
    # The report's forward was the squared Frobenius norm (39), N times the mean (9.75).
    assert loss(pred, target).item() == pytest.approx(9.75)
    assert loss.backward().tolist() == [[0.5, 1.0], [1.5, 2.5]]


def test_backward_never_updates_weights():
    layer = mt.Linear(3, 2, generator=torch.Generator().manual_seed(0))
    before = layer.weight.clone(), layer.bias.clone()
    layer.forward(torch.randn(4, 3))
    layer.backward(torch.ones(4, 2))
    assert torch.equal(layer.weight, before[0]) and torch.equal(layer.bias, before[1])
    assert layer.grad_weight.abs().sum() > 0


def test_gradients_accumulate_until_zero_grad():
    layer = mt.Linear(3, 2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3)
    layer.forward(x)
    layer.backward(torch.ones(4, 2))
    once = layer.grad_weight.clone()
    layer.forward(x)
    layer.backward(torch.ones(4, 2))
    torch.testing.assert_close(layer.grad_weight, 2 * once)
    layer.zero_grad()
    assert layer.grad_weight.abs().sum() == 0


def test_works_with_grad_disabled():
    torch.set_grad_enabled(False)
    try:
        model = mt.mlp((2, 4, 2), ("tanh",), generator=torch.Generator().manual_seed(0))
        before = [p.clone() for p, _ in model.params()]
        loss = mt.MSE()
        loss(model(torch.rand(5, 2)), torch.rand(5, 2))
        model.backward(loss.backward())
        mt.SGD(model.params(), 0.1).step()
    finally:
        torch.set_grad_enabled(True)
    # Gradients came from the hand-written backward alone, and the step applied them.
    for (p, g), old in zip(model.params(), before, strict=True):
        assert not p.requires_grad and g.abs().sum() > 0
        torch.testing.assert_close(p, old - 0.1 * g)


def test_sequential_repr_reads_like_torch():
    model = mt.mlp((2, 25, 2), ("relu",), replicas=4)
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=25, replicas=4)\n"
        "  (1): ReLU()\n"
        "  (2): Linear(in_features=25, out_features=2, replicas=4)\n"
        ")"
    )


def test_init_torch_bounds_and_determinism():
    a = mt.Linear(25, 25, generator=torch.Generator().manual_seed(5))
    b = mt.Linear(25, 25, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.weight.abs().max() <= 0.2 and a.bias.abs().max() <= 0.2  # 1/sqrt(25)
    assert a.weight.abs().max() > 0.18  # the whole range is used
    x = mt.Linear(25, 25, init="xavier", generator=torch.Generator().manual_seed(5))
    assert x.weight.abs().max() <= (6 / 50) ** 0.5 and x.bias.abs().sum() == 0
    n = mt.Linear(400, 100, init="normal", generator=torch.Generator().manual_seed(5))
    assert n.weight.std().item() == pytest.approx(1 / 20, rel=0.05)
