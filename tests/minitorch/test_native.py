"""The native kernel's two layouts (rows, lanes), its thread split and its instruction sets.

The "lanes" layout trains 8 replicas at once, one per vector lane; "rows" one replica at a time;
"auto" puts the groups of 8 in lanes and a remainder of fewer than 6 in rows. Each replica's
arithmetic is the same in all of them, so they must agree bit for bit, at any thread count.
"""

from __future__ import annotations

import pytest
import torch

import minitorch as mt
from minitorch.fast import native
from tests.minitorch.test_fused import assert_native_epochs_equal_modules

SIZES = (3, 25, 40, 17, 3)  # as test_fused.wide_model: its builds are cached already


def wide_model(
    replicas, acts=("tanh", "relu", "sigmoid"), loss="mse", tanh_grad="exact", sizes=SIZES
):
    gen = [mt.seeded_generator(s, "init") for s in range(replicas)]
    model = mt.mlp(sizes, acts, replicas=replicas, generator=gen, tanh_grad=tanh_grad)
    lr = torch.linspace(0.05, 0.3, replicas)  # one rate per replica: lanes must not mix them
    return model, mt.LOSSES[loss](replicas=replicas), mt.SGD(model.params(), lr)


def train(R, layout, threads, acts, loss, tanh_grad, sizes=SIZES, epochs=2, N=30, B=7):
    """Parameters, last gradients and loss sums after `epochs` shuffled epochs of batch B."""
    model, loss_fn, opt = wide_model(R, acts, loss, tanh_grad, sizes)
    fused = mt.FusedMLPStep(model, loss_fn, opt, kernel="native", threads=threads)
    fused.native_layout = layout
    gen = torch.Generator().manual_seed(11)
    x, y = torch.rand(R, N, sizes[0], generator=gen), torch.rand(R, N, sizes[-1], generator=gen)
    sums = torch.zeros(R, dtype=torch.float64)
    for _ in range(epochs):
        order = torch.stack([torch.randperm(N, generator=gen) for _ in range(R)])
        fused.epoch(x, y, B, sums, order=order)
    return [t.clone() for pair in model.params() for t in pair] + [sums]


CASES = [  # every activation, both losses, both tanh derivatives (builds shared with test_fused)
    (("tanh", "relu", "sigmoid"), "mse", "exact"),
    (("tanh", "relu", "sigmoid"), "mae", "report"),
    (("relu", "tanh", "tanh"), "mse", "report"),
]


@pytest.mark.parametrize("acts, loss, tanh_grad", CASES)
def test_layouts_and_thread_counts_give_the_same_bits(acts, loss, tanh_grad):
    # R = 11: "lanes" pads a second group (3 of 8 lanes used); "auto" is one group + 3 in rows.
    ref = train(11, "rows", 1, acts, loss, tanh_grad)
    for layout, threads in [("lanes", 1), ("lanes", 2), ("auto", 1), ("auto", 2), ("auto", 3),
                            ("rows", 3)]:  # fmt: skip
        got = train(11, layout, threads, acts, loss, tanh_grad)
        for a, b in zip(ref, got, strict=True):
            assert torch.equal(a, b), (layout, threads)


@pytest.mark.parametrize("acts, loss, tanh_grad", CASES)
def test_lanes_epoch_equals_module_steps_with_a_short_last_batch(acts, loss, tanh_grad):
    # 10 replicas = 8 + 2 padded lanes
    assert_native_epochs_equal_modules(10, acts, loss, tanh_grad, layout="lanes")


def test_unknown_native_layout_is_refused():
    fused = mt.FusedMLPStep(*wide_model(2), kernel="native")
    fused.native_layout = "columns"
    with pytest.raises(ValueError, match=r"native_layout='columns' is not known; accepted: auto"):
        fused.epoch(torch.rand(2, 10, 3), torch.rand(2, 10, 3), 5)


# --- instruction sets ---------------------------------------------------------------------------


def test_forced_avx2_and_generic_builds(tmp_path, monkeypatch):
    """$MINITORCH_NATIVE_ISA=avx2 builds the kernel a machine without AVX-512 gets: the same bits
    (with FMA the results do not depend on the vector width); generic (SSE2, no FMA) rounds each
    product and sum apart, so it is only close to them, but its layouts still agree exactly."""
    sizes, acts, loss, tanh_grad = (3, 9, 5, 2), ("tanh", "relu"), "mae", "report"  # builds fast
    case = (acts, loss, tanh_grad, sizes)
    default = train(11, "auto", 2, *case)  # the default build
    machine = native.features(native.load(sizes, acts, loss, tanh_grad))
    monkeypatch.setenv("MINITORCH_KERNEL_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        for isa in ("avx2", "generic"):
            monkeypatch.setenv("MINITORCH_NATIVE_ISA", isa)
            features = native.features(native.load(sizes, acts, loss, tanh_grad))
            got = train(11, "auto", 2, *case)
            if isa == "avx2":
                assert features == machine - {"avx512f", "avx512vl"}
                for a, b in zip(default, got, strict=True):
                    assert torch.equal(a, b)
            else:
                assert features == set()
                for a, b in zip(default, got, strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
                for a, b in zip(got, train(11, "lanes", 1, *case), strict=True):
                    assert torch.equal(a, b)
        assert len(list(tmp_path.glob("mlp_*.so"))) == 2  # one file per instruction set
        monkeypatch.setenv("MINITORCH_NATIVE_ISA", "avx1024")
        with pytest.raises(ValueError, match=r"MINITORCH_NATIVE_ISA='avx1024' is not known"):
            native.load(sizes, acts, loss, tanh_grad)
    finally:
        native.load.cache_clear()


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_nonfinite_names_the_replicas_with_an_inf_or_nan_parameter(kernel):
    """What training freezes as diverged: any inf or NaN among a replica's weights and biases,
    in any layer; huge finite values (3e38) are not."""
    model, loss_fn, opt = wide_model(11)
    fused = mt.FusedMLPStep(model, loss_fn, opt, kernel=kernel)
    assert fused.nonfinite().tolist() == [False] * 11
    params = [p for p, _ in model.params()]  # W0, b0, W1, b1, ...
    with torch.no_grad():
        params[0][1, 3, 2] = float("nan")  # first layer's weights
        params[3][4, 16] = float("inf")  # second layer's bias (its last value)
        params[6][10, 2, 16] = -float("inf")  # last layer's weights, last replica, last value
        params[7][7, 0] = 3e38  # large but finite
        params[5][9, 0] = -3e38
    expect = [r in (1, 4, 10) for r in range(11)]
    assert fused.nonfinite().tolist() == expect
