"""The fused fast path (minitorch.fast) equals the general modules + SGD, step for step."""

from __future__ import annotations

import pytest
import torch

import minitorch as mt
from minitorch.fast import native


def build(acts, replicas, dtype, loss_name, lr, tanh_grad="exact"):
    gen = [mt.seeded_generator(s, "init") for s in range(replicas or 1)]
    model = mt.mlp(
        (2, 9, 7, 8, 2),
        acts,
        replicas=replicas,
        dtype=dtype,
        generator=gen if replicas else gen[0],
        tanh_grad=tanh_grad,
    )
    loss = mt.LOSSES[loss_name](replicas=replicas)
    return model, loss, mt.SGD(model.params(), lr)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("replicas", [None, 1, 4])
@pytest.mark.parametrize("acts", [("tanh",) * 3, ("relu", "sigmoid", "tanh")])
@pytest.mark.parametrize("loss_name", ["mse", "mae"])
@pytest.mark.parametrize("kernel", mt.KERNELS)
@pytest.mark.parametrize("tanh_grad", mt.TANH_GRADS)
def test_fused_step_equals_modules(dtype, tol, replicas, acts, loss_name, kernel, tanh_grad):
    lr = 0.3 if replicas is None else torch.linspace(0.1, 0.5, replicas, dtype=dtype)
    ref_model, ref_loss, ref_opt = build(acts, replicas, dtype, loss_name, lr, tanh_grad)
    model, loss, opt = build(acts, replicas, dtype, loss_name, lr, tanh_grad)
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


@pytest.mark.parametrize("tanh_grad", mt.TANH_GRADS)
def test_kernels_agree_on_the_report_model_over_many_steps(tanh_grad):
    runs = {}
    for kernel in ("native", "torch"):
        lr = torch.full((6,), 0.05)
        model, loss, opt = build(("tanh",) * 3, 6, torch.float32, "mse", lr, tanh_grad)
        fused = mt.FusedMLPStep(model, loss, opt, kernel=kernel)
        gen = torch.Generator().manual_seed(1)
        for _ in range(200):
            fused.step(torch.rand(6, 25, 2, generator=gen), torch.rand(6, 25, 2, generator=gen))
        runs[kernel] = [p.clone() for p, _ in model.params()]
    for a, b in zip(runs["native"], runs["torch"], strict=True):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_report_tanh_grad_trains_differently_from_the_exact_one(kernel):
    """Same init, same batches: the report's derivative must change the weights, every kernel."""
    runs = {}
    for tanh_grad in mt.TANH_GRADS:
        model, loss, opt = build(("tanh",) * 3, 3, torch.float32, "mse", 0.1, tanh_grad)
        fused = mt.FusedMLPStep(model, loss, opt, kernel=kernel)
        assert fused.tanh_grad == tanh_grad
        gen = torch.Generator().manual_seed(2)
        for _ in range(5):
            fused.step(torch.rand(3, 25, 2, generator=gen), torch.rand(3, 25, 2, generator=gen))
        runs[tanh_grad] = [p.clone() for p, _ in model.params()]
    # The first layer's weights see the derivative three times: 2x-and-more steps differ.
    assert (runs["report"][0] - runs["exact"][0]).abs().max().item() > 1e-3


def test_mixed_tanh_grads_are_refused():
    model = mt.Sequential(
        mt.Linear(2, 3), mt.Tanh(), mt.Linear(3, 3), mt.Tanh(grad="report"), mt.Linear(3, 2)
    )
    with pytest.raises(TypeError, match=r"Tanh modules mix derivatives \['exact', 'report'\]"):
        mt.FusedMLPStep(model, mt.MSE(), mt.SGD(model.params(), 0.1))


def test_unknown_kernel_is_refused():
    model, loss, opt = build(("tanh",) * 3, None, torch.float32, "mse", 0.1)
    with pytest.raises(
        ValueError, match=r"kernel='cuda' is not known; accepted: auto, native, torch"
    ):
        mt.FusedMLPStep(model, loss, opt, kernel="cuda")


def test_fused_refuses_other_shapes():
    model = mt.Sequential(mt.Linear(2, 3), mt.Linear(3, 2))
    with pytest.raises(TypeError, match=r"module 1 is Linear\(in_features=3, out_features=2\)"):
        mt.FusedMLPStep(model, mt.MSE(), mt.SGD(model.params(), 0.1))


# --- the interface: declared kinds, mlp_parts, SGD's rates, the kernel chosen once --------------


def test_modules_and_losses_declare_their_kind_by_their_registry_name():
    assert {name: cls.kind for name, cls in mt.ACTIVATIONS.items()} == {
        "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"
    }  # fmt: skip
    assert {name: cls.kind for name, cls in mt.LOSSES.items()} == {"mse": "mse", "mae": "mae"}
    assert mt.Linear.kind == "linear"
    assert mt.Sequential.kind is None and mt.Module.kind is None and mt.Loss.kind is None


def test_mlp_parts_describes_the_model_with_its_own_tensors():
    model = mt.mlp((2, 4, 3, 1), ("relu", "tanh"), replicas=2, tanh_grad="report")
    parts = mt.fast.mlp_parts(model)
    assert parts.sizes == (2, 4, 3, 1)
    assert parts.activations == ("relu", "tanh")
    assert (parts.tanh_grad, parts.replicas, parts.dtype) == ("report", 2, torch.float32)
    assert parts.weights[1] is model[2].weight and parts.grad_biases[2] is model[4].grad_bias
    assert mt.fast.mlp_parts(mt.mlp((2, 3, 1), ("sigmoid",))).replicas is None
    with pytest.raises(TypeError, match=r"mlp_parts: the model is Linear\(.*\); expected a Seq"):
        mt.fast.mlp_parts(mt.Linear(2, 2))


def test_sgd_replica_lrs_are_what_the_native_kernel_applies():
    model = mt.mlp((2, 3, 1), ("tanh",), replicas=3)
    opt = mt.SGD(model.params(), 0.25)
    assert torch.equal(opt.replica_lrs(3), torch.full((3,), 0.25))
    opt.set_lr(torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64))
    rates = opt.replica_lrs(3)
    assert rates.dtype == torch.float32 and rates.is_contiguous()
    assert rates.tolist() == pytest.approx([0.1, 0.0, 0.3])
    with pytest.raises(ValueError, match=r"SGD: 3 per-replica learning rates were asked for 4"):
        opt.replica_lrs(4)


def test_optimizer_without_replica_lrs_is_refused():
    model, loss, _ = build(("tanh",) * 3, None, torch.float32, "mse", 0.1)
    with pytest.raises(TypeError, match=r"optimizer <object .*> has no replica_lrs\(\); expected"):
        mt.FusedMLPStep(model, loss, object())  # type: ignore[arg-type]


def test_kernel_is_chosen_once_and_torch_never_loads_the_native_library(monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the native library was loaded after construction")

    model, loss, opt = build(("tanh",) * 3, 2, torch.float32, "mse", 0.1)
    auto = mt.FusedMLPStep(model, loss, opt)  # float32: the native kernel, loaded here
    assert (auto.kernel, auto.kernel_used, auto.native) == ("auto", "native", True)
    monkeypatch.setattr(native, "load", no_load)
    fused = mt.FusedMLPStep(model, loss, opt, kernel="torch")
    assert (fused.kernel_used, fused.native) == ("torch", False)
    x, y = torch.rand(2, 10, 2), torch.rand(2, 10, 2)
    before = torch.get_num_threads()
    for threads in (1, 2):  # the old "auto" re-chose its kernel by the thread count each step
        torch.set_num_threads(threads)
        try:
            for f in (auto, fused):
                f.step(x[:, :5], y[:, :5])
                f.epoch(x, y, 5)
                f.forward(x)
        finally:
            torch.set_num_threads(before)
    assert (auto.kernel_used, fused.kernel_used) == ("native", "torch")
    with pytest.raises(AttributeError):
        fused.kernel_used = "native"  # type: ignore[misc]


def test_auto_takes_torch_for_float64_without_a_warning(recwarn):
    model, loss, opt = build(("tanh",) * 3, 2, torch.float64, "mae", 0.1)
    fused = mt.FusedMLPStep(model, loss, opt)
    assert (fused.kernel_used, fused.native) == ("torch", False)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_minitorch_native_is_the_fast_paths_builder():
    assert mt.native is native and mt.fast.native is native
    assert native.CSRC.parent.name == "fast" and (native.CSRC / "mlp_net.hpp").is_file()
    assert mt.KERNELS == ("auto", "native", "torch")


# --- the native kernel -------------------------------------------------------------------------


def wide_model(replicas, acts=("tanh", "relu", "sigmoid"), loss="mse", lr=0.2, tanh_grad="exact"):
    """Widths that give the native kernel's every block shape: 1, 3, 4 and 5 vectors a row."""
    gen = [mt.seeded_generator(s, "init") for s in range(replicas)]
    model = mt.mlp((3, 25, 40, 17, 3), acts, replicas=replicas, generator=gen, tanh_grad=tanh_grad)
    return model, mt.LOSSES[loss](replicas=replicas), mt.SGD(model.params(), lr)


@pytest.mark.parametrize("loss_name", ["mse", "mae"])
@pytest.mark.parametrize(
    "acts, tanh_grad",
    [
        (("tanh", "relu", "sigmoid"), "exact"),
        (("tanh", "relu", "sigmoid"), "report"),
        (("relu", "tanh", "tanh"), "report"),  # the report's tanh at 5 and 3 vectors a row
    ],
)
def test_native_epoch_equals_module_steps_with_a_short_last_batch(loss_name, acts, tanh_grad):
    # batches of 7, 7, 7, 7, 2: full and partial register blocks
    assert_native_epochs_equal_modules(3, acts, loss_name, tanh_grad)


def assert_native_epochs_equal_modules(
    R: int, acts, loss_name: str, tanh_grad: str, layout: str | None = None
) -> None:
    """Three epochs of the native kernel (`layout`: its default, or "rows"/"lanes") equal the
    modules' steps, batches of 7 over 30 rows (a short last batch), and so does a forward of
    more rows than one chunk."""
    N, B = 30, 7
    ref_model, ref_loss, ref_opt = wide_model(R, acts, loss_name, tanh_grad=tanh_grad)
    model, loss, opt = wide_model(R, acts, loss_name, tanh_grad=tanh_grad)
    fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
    if layout is not None:
        fused.native_layout = layout
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(R, N, 3, generator=gen), torch.rand(R, N, 3, generator=gen)
    sums, ref_sums = torch.zeros(R, dtype=torch.float64), torch.zeros(R, dtype=torch.float64)
    for _ in range(3):
        fused.epoch(x, y, B, sums)
        for s in range(0, N, B):
            ref_sums += ref_loss(ref_model(x[:, s : s + B]), y[:, s : s + B]).double()
            ref_opt.zero_grad()
            ref_model.backward(ref_loss.backward())
            ref_opt.step()
    for (p, g), (rp, rg) in zip(model.params(), ref_model.params(), strict=True):
        torch.testing.assert_close(p, rp, rtol=0, atol=2e-6)
        torch.testing.assert_close(g, rg, rtol=0, atol=2e-6)  # the last step's gradients
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=0)
    x_eval = torch.rand(R, 130, 3, generator=gen)  # more rows than one forward chunk (64)
    torch.testing.assert_close(fused.forward(x_eval), ref_model(x_eval), rtol=0, atol=2e-6)


@pytest.mark.parametrize("tanh_grad", mt.TANH_GRADS)
def test_torch_kernel_epoch_equals_native_epoch(tanh_grad):
    runs = []
    for kernel in ("native", "torch"):
        model, loss, opt = wide_model(2, ("tanh", "relu", "tanh"), tanh_grad=tanh_grad)
        gen = torch.Generator().manual_seed(4)
        x, y = torch.rand(2, 23, 3, generator=gen), torch.rand(2, 23, 3, generator=gen)
        mt.FusedMLPStep(model, loss, opt, kernel=kernel).epoch(x, y, 5)
        runs.append([p.clone() for p, _ in model.params()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("tanh_grad", mt.TANH_GRADS)
def test_native_extreme_inputs_saturate_like_torch(tanh_grad):
    x = torch.tensor([[1e4, -1e4, 3e3], [-1e30, 1e30, 0.0], [0.0, 0.0, 0.0]]).expand(2, 3, 3)
    for acts in [("tanh",) * 3, ("sigmoid",) * 3]:
        model, loss, opt = wide_model(2, acts=acts, tanh_grad=tanh_grad)
        fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
        torch.testing.assert_close(fused.forward(x), model(x), rtol=0, atol=1e-6)
    # relu passes the large values on: equal up to float32 rounding of sums near 1e30
    model, loss, opt = wide_model(2, acts=("relu",) * 3)
    fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
    torch.testing.assert_close(fused.forward(x), model(x), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", ["rows", "lanes"])
@pytest.mark.parametrize(
    "acts, tanh_grad",
    [(("tanh",) * 3, "exact"), (("tanh",) * 3, "report"), (("relu", "relu", "sigmoid"), "exact")],
)
def test_native_nan_replica_stays_nan_and_alone(acts, tanh_grad, layout):
    """A diverged (NaN) replica must not touch its neighbours, even through padded lanes (rows
    layout) or the vector lanes of the other replicas of its group (lanes layout)."""
    model, loss, opt = wide_model(3, acts=acts, tanh_grad=tanh_grad)
    ref_model, ref_loss, ref_opt = wide_model(3, acts=acts, tanh_grad=tanh_grad)
    for p, _ in model.params():
        p[1] = float("nan")
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(3, 20, 3, generator=gen), torch.rand(3, 20, 3, generator=gen)
    fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
    fused.native_layout = layout
    fused.epoch(x, y, 5)
    mt.FusedMLPStep(ref_model, ref_loss, ref_opt, kernel="native").epoch(x, y, 5)
    for (p, _), (rp, _) in zip(model.params(), ref_model.params(), strict=True):
        assert torch.isnan(p[1]).all()
        torch.testing.assert_close(p[[0, 2]], rp[[0, 2]], rtol=0, atol=0)


def test_native_build_is_cached_once_per_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITORCH_KERNEL_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        lib = native.load((2, 5, 2), ("tanh",), "mae")
        assert lib.mt_layers() == 2
        built = [p.name for p in tmp_path.iterdir()]
        assert len(built) == 1 and built[0].startswith("mlp_2-5-2_") and built[0].endswith(".so")
        native.load.cache_clear()
        mtime = (tmp_path / built[0]).stat().st_mtime_ns
        native.load((2, 5, 2), ("tanh",), "mae")  # from disk, not rebuilt
        assert (tmp_path / built[0]).stat().st_mtime_ns == mtime
        assert [p.name for p in tmp_path.iterdir()] == built
        # The report's tanh derivative is compiled in: a kernel of its own.
        native.load((2, 5, 2), ("tanh",), "mae", tanh_grad="report")
        assert len(list(tmp_path.iterdir())) == 2
    finally:
        native.load.cache_clear()


@pytest.mark.parametrize(
    "cxx, message",
    [
        ("no-such-compiler", r"no C\+\+ compiler: 'no-such-compiler' is not on PATH"),
        ("false", r"building the native kernel failed \(.*false -O3.*\), exit code 1"),
    ],
)
def test_without_a_compiler_auto_falls_back_and_native_says_why(tmp_path, monkeypatch, cxx,
                                                                 message):  # fmt: skip
    monkeypatch.setenv("MINITORCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", cxx)
    native.load.cache_clear()
    native._compiler.cache_clear()
    try:
        model, loss, opt = build(("tanh",) * 3, 2, torch.float32, "mse", 0.1)
        with pytest.raises(ValueError, match=r"kernel='native' cannot be used: " + message):
            mt.FusedMLPStep(model, loss, opt, kernel="native")
        with pytest.warns(RuntimeWarning, match=r"native kernel is unavailable .*slower torch"):
            fused = mt.FusedMLPStep(model, loss, opt)
        fused.epoch(torch.rand(2, 10, 2), torch.rand(2, 10, 2), 5)  # still trains, on torch
        assert all(torch.isfinite(p).all() for p, _ in model.params())
        assert list(tmp_path.iterdir()) == []  # nothing half-built left behind
    finally:
        native.load.cache_clear()
        native._compiler.cache_clear()


def test_unwritable_kernel_cache_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MINITORCH_KERNEL_CACHE", str(blocker / "kernels"))
    native.load.cache_clear()
    try:
        model, loss, opt = build(("tanh",) * 3, 2, torch.float32, "mae", 0.1)
        with pytest.raises(ValueError, match=r"cannot write the kernel cache .*not-a-dir/kernels"):
            mt.FusedMLPStep(model, loss, opt, kernel="native")
        with pytest.warns(RuntimeWarning, match=r"set \$MINITORCH_KERNEL_CACHE"):
            mt.FusedMLPStep(model, loss, opt)
    finally:
        native.load.cache_clear()


def test_native_refuses_mismatched_inputs():
    model, loss, opt = wide_model(2)
    fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
    with pytest.raises(ValueError, match=r"x has shape \[3, 10, 3\]; expected \[2, rows, 3\]"):
        fused.epoch(torch.rand(3, 10, 3), torch.rand(3, 10, 3), 5)
    with pytest.raises(ValueError, match=r"x has 10 rows and y 9; they must match"):
        fused.epoch(torch.rand(2, 10, 3), torch.rand(2, 9, 3), 5)
    with pytest.raises(ValueError, match=r"batch_size=0; expected >= 1"):
        fused.epoch(torch.rand(2, 10, 3), torch.rand(2, 10, 3), 0)


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_epoch_order_visits_rows_as_listed(kernel):
    """order[r] = the rows replica r visits; it equals training on the gathered copy."""
    R, N, M, B = 2, 12, 17, 5  # more visits than rows: indices may repeat
    gen = torch.Generator().manual_seed(6)
    x, y = torch.rand(R, N, 3, generator=gen), torch.rand(R, N, 3, generator=gen)
    order = torch.randint(0, N, (R, M), generator=gen)
    a, b = wide_model(R), wide_model(R)
    mt.FusedMLPStep(*a, kernel=kernel).epoch(x, y, B, order=order)
    gather = lambda t: torch.stack([t[r, order[r]] for r in range(R)])  # noqa: E731
    mt.FusedMLPStep(*b, kernel=kernel).epoch(gather(x), gather(y), B)
    for (p, _), (q, _) in zip(a[0].params(), b[0].params(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_epoch_order_out_of_range_changes_nothing(kernel):
    model, loss, opt = wide_model(2)
    before = [p.clone() for p, _ in model.params()]
    fused = mt.FusedMLPStep(model, loss, opt, kernel=kernel)
    x, y = torch.rand(2, 10, 3), torch.rand(2, 10, 3)
    with pytest.raises(IndexError, match=r"order has indices outside \[0, 10\)"):
        fused.epoch(x, y, 5, order=torch.tensor([[0, 1, 2], [3, 4, 10]]))
    with pytest.raises(ValueError, match=r"order is torch.int32 of shape \[2, 3\]; expected int64"):
        fused.epoch(x, y, 5, order=torch.zeros(2, 3, dtype=torch.int32))
    for p, q in zip((p for p, _ in model.params()), before, strict=True):
        assert torch.equal(p, q)


def test_native_threads_split_replicas_with_identical_results():
    """torch.get_num_threads() threads share the replicas; each replica's arithmetic is the same."""
    runs = []
    for threads in (1, 2, 3):
        model, loss, opt = wide_model(5)
        fused = mt.FusedMLPStep(model, loss, opt, kernel="native")
        gen = torch.Generator().manual_seed(8)
        x, y = torch.rand(5, 40, 3, generator=gen), torch.rand(5, 40, 3, generator=gen)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fused.epoch(x, y, 7)
            out = fused.forward(x)
        finally:
            torch.set_num_threads(before)
        runs.append([p.clone() for p, _ in model.params()] + [out])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
