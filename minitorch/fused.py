"""A fused training step for MLPs: the same math as the modules, with far fewer Python calls.

`Sequential.forward/backward` + `SGD.step` allocate fresh tensors and re-check shapes at every
call; for the report's tiny model that overhead is most of the time. `FusedMLPStep` runs SGD
steps of a `Sequential` of `Linear` and activation modules on preallocated buffers, sharing the
model's parameter and gradient tensors. It is tested to give the same parameters as the general
modules (tests/minitorch/test_fused.py).

Every Tanh of the model must have the same derivative (`Tanh(grad=...)`, `mlp(tanh_grad=...)`):
every kernel computes the exact 1 - t^2 from the output t, or the report's 2 sech(s) from the
pre-activation s.

Kernels, chosen by `kernel`; "auto", the default, takes "native" for float32 models when the
machine can build it, else "numpy" when torch runs on one thread and "torch" otherwise:
- "native": minitorch/csrc (see minitorch/native.py), compiled once per architecture with the
  machine's C++ compiler. It trains 8 replicas at once with one replica per vector lane (no
  padding whatever the layer widths), each layer's three products as register-blocked FMA
  loops with the activation derivative and the SGD update fused in; a remainder of fewer than
  6 replicas runs one replica at a time with the batch rows blocked instead ("rows" layout).
  Both layouts give the same bits. One call per epoch for all replicas, split over `threads`
  threads (default: torch's thread count). float32 only.
- "torch": torch.bmm / baddbmm (MKL's batched GEMM in the CPU build of torch), ~32 calls a step;
- "numpy": as "torch", but the backward's products (g^T h for the weights, g W for the inputs)
  go through numpy.matmul on zero-copy views of the same tensors (OpenBLAS, one GEMM per
  replica), ~1.3x faster than MKL's batched GEMM for these 25 x 25 x 25 shapes here.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from minitorch import native
from minitorch.activations import ReLU, Sigmoid, Tanh, report_tanh_grad
from minitorch.linear import Linear
from minitorch.losses import MAE, MSE, Loss
from minitorch.module import Sequential
from minitorch.optim import SGD


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
        self.kernel = kernel
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise ValueError(f"FusedMLPStep: threads={threads!r}; expected an integer >= 1.")
        self.threads = threads
        self.layers, self.acts, self.tanh_grad = _mlp_parts(model)
        if not isinstance(loss, (MSE, MAE)):
            raise TypeError(f"FusedMLPStep: loss {loss!r} is not supported; expected MSE or MAE.")
        self.loss_kind = "mse" if isinstance(loss, MSE) else "mae"
        self.optimizer = optimizer
        self.replicas = self.layers[0].replicas
        # Everything runs on [R, B, f] views; a model without replicas is viewed as R = 1.
        as3 = (lambda t: t.unsqueeze(0)) if self.replicas is None else (lambda t: t)
        self.W = [as3(m.weight) for m in self.layers]
        self.b = [as3(m.bias).unsqueeze(1) for m in self.layers]  # [R, 1, out]
        self.Wt = [w.transpose(1, 2) for w in self.W]
        self.bt_last = self.b[-1].transpose(1, 2)  # [R, out, 1]
        dtype = self.layers[0].weight.dtype
        self._minus_one = torch.tensor(-1.0, dtype=dtype)
        self.gW = [as3(m.grad_weight) for m in self.layers]
        self.gb = [as3(m.grad_bias) for m in self.layers]
        self._buffers: dict[tuple[int, bool], dict[str, list[Tensor]]] = {}
        # numpy kernel: views of the weights and gradients the backward products use.
        self.np_W = [w.numpy() for w in self.W]
        self.np_gW = [g.numpy() for g in self.gW]
        self._native = self._load_native(kernel, dtype) if kernel in ("auto", "native") else None
        # How the native kernel lays the replicas out (NATIVE_LAYOUTS; the same bits in each):
        # "auto", or "rows" / "lanes" for all replicas, to compare them (benchmarks, tests).
        self.native_layout = "auto"

    def _load_native(self, kernel: str, dtype: torch.dtype):
        """The compiled kernel for this model, or None where "auto" falls back to torch."""
        problem = None
        if dtype != torch.float32:
            problem = f"it computes in float32 only and the model is {dtype}"
        elif not all(t.is_contiguous() for m in self.layers for t, _ in m.params()):
            problem = "the model's parameters are not contiguous"
        if problem is None:
            sizes = (self.layers[0].in_features, *(m.out_features for m in self.layers))
            try:
                return native.load(sizes, tuple(self.acts), self.loss_kind, self.tanh_grad)
            except native.NativeUnavailable as e:
                problem = str(e)
        if kernel == "native":
            raise ValueError(f"FusedMLPStep: kernel='native' cannot be used: {problem}.")
        if dtype == torch.float32:  # float64 models are meant for the torch kernels: no noise
            warnings.warn(
                f"FusedMLPStep: the native kernel is unavailable ({problem}); using the "
                "slower torch kernels.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None

    @property
    def native(self) -> bool:
        """Whether the native kernel does the work."""
        return self._native is not None

    def _threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()

    def _native_args(self, x: Tensor, y: Tensor | None = None) -> list:
        """Checked, contiguous float32 inputs and the parameter pointers for a native call."""
        R = self.W[0].shape[0]
        for name, t, n in (("x", x, self.layers[0].in_features),
                           ("y", y, self.layers[-1].out_features)):  # fmt: skip
            if t is not None and (t.dim() != 3 or t.shape[0] != R or t.shape[2] != n):
                raise ValueError(
                    f"FusedMLPStep: {name} has shape {list(t.shape)}; expected "
                    f"[{R}, rows, {n}] (one block of rows per replica)."
                )
        if y is not None and y.shape[1] != x.shape[1]:
            raise ValueError(
                f"FusedMLPStep: x has {x.shape[1]} rows and y {y.shape[1]}; they must match."
            )
        keep = [x.contiguous().to(torch.float32), None if y is None else y.contiguous().float()]
        keep += [native.pointers([m.weight for m in self.layers]),
                 native.pointers([m.bias for m in self.layers])]  # fmt: skip
        return keep

    def _forward(self, x: Tensor, buf: dict[str, list[Tensor]]) -> Tensor:
        z = buf["z"]
        n_last = len(self.layers) - 1
        h = x
        for i in range(n_last):
            if self.acts[i] == "tanh":
                # tanh(z) = 2 sigmoid(2z) - 1; the 2z is folded into the product.
                torch.baddbmm(self.b[i], h, self.Wt[i], beta=2, alpha=2, out=z[i])
                if buf.get("d"):  # training with the report's derivative: save 2 sech(z)
                    report_tanh_grad(torch.mul(z[i], 0.5, out=buf["d"][i]), out=buf["d"][i])
                torch.sigmoid(z[i], out=z[i])
                torch.add(self._minus_one, z[i], alpha=2, out=z[i])
            else:
                torch.baddbmm(self.b[i], h, self.Wt[i], out=z[i])
                _act_forward_(self.acts[i], z[i])
            h = z[i]
        # Few outputs: [out, hidden] x [hidden, B] is a far better shape for the BLAS than
        # [B, hidden] x [hidden, out], and the [R, out, B] result is small to transpose back.
        torch.baddbmm(self.bt_last, self.W[n_last], buf["zt"][n_last - 1], out=buf["last_t"][0])
        z[n_last].copy_(buf["last_t"][0].transpose(1, 2))
        return z[n_last]

    def _buffers_for(self, x: Tensor, train: bool = True) -> dict[str, list[Tensor]]:
        """Buffers for one input shape, made once; gradient buffers only for training."""
        R, B = x.shape[0], x.shape[1]
        key = (B, train)
        buf = self._buffers.get(key)
        if buf is None:
            new = lambda n: torch.empty(R, B, n, dtype=x.dtype)  # noqa: E731
            outs = [m.out_features for m in self.layers]
            ins = [m.in_features for m in self.layers]
            buf = {"z": [new(n) for n in outs]}  # pre-activations, then activations (in place)
            buf["zt"] = [t.transpose(1, 2) for t in buf["z"]]
            buf["last_t"] = [torch.empty(R, outs[-1], B, dtype=x.dtype)]
            buf["np_z"] = [t.numpy() for t in buf["z"]]
            if train:
                buf["g"] = [new(n) for n in outs]  # gradient wrt each layer's output
                buf["gt"] = [t.transpose(1, 2) for t in buf["g"]]
                buf["gh"] = [new(n) for n in ins]  # gradient wrt each layer's input
                buf["tmp"] = [new(n) for n in outs]
                # The report's tanh derivative, 2 sech(z), from the pre-activation z: the
                # forward overwrites z with tanh(z), from which it would lose its precision.
                buf["d"] = [new(n) for n in outs[:-1]] if self.tanh_grad == "report" else []
                buf["gw0_t"] = [torch.empty(R, ins[0], outs[0], dtype=x.dtype)]
                buf["np_g"] = [t.numpy() for t in buf["g"]]
                buf["np_gt"] = [t.numpy() for t in buf["gt"]]
                buf["np_gh"] = [t.numpy() for t in buf["gh"]]
            self._buffers[key] = buf
        return buf

    def forward(self, x: Tensor) -> Tensor:
        """The model's output for x ([B, in], or [R, B, in] with replicas).

        With the torch kernels the result lives in cached buffers, valid until the next call.
        """
        x3 = x.unsqueeze(0) if self.replicas is None else x
        if self._native is not None:
            xc, _, W, b = self._native_args(x3)
            out = torch.empty(xc.shape[0], xc.shape[1], self.layers[-1].out_features)
            rc = self._native.mt_forward(xc.shape[0], xc.shape[1], xc.data_ptr(), W, b,
                                         out.data_ptr(), self._threads())  # fmt: skip
            _check_rc(rc)
        else:
            out = self._forward(x3, self._buffers_for(x3, train=False))
        return out[0] if self.replicas is None else out

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
        if self._native is not None:
            self._native_train(x, y, batch_size, loss_sum, order)
            return
        if order is not None:
            if order.numel() and (int(order.min()) < 0 or int(order.max()) >= x.shape[1]):
                raise IndexError(
                    f"FusedMLPStep.epoch: order has indices outside [0, {x.shape[1]})."
                )
            x = torch.gather(x, 1, order.unsqueeze(2).expand(-1, -1, x.shape[2]))
            y = torch.gather(y, 1, order.unsqueeze(2).expand(-1, -1, y.shape[2]))
        R, N = x.shape[0], x.shape[1]
        n_full = N // batch_size
        if n_full:
            # Batch-major copies: batch s of every replica is one contiguous [R, B, f] block.
            def batches(t: Tensor) -> Tensor:
                head = t[:, : n_full * batch_size].reshape(R, n_full, batch_size, t.shape[2])
                return head.transpose(0, 1).contiguous()

            xb, yb = batches(x), batches(y)
            for s in range(n_full):
                self._step3(xb[s], yb[s], loss_sum)
        if n_full * batch_size < N:
            rest = slice(n_full * batch_size, N)
            self._step3(x[:, rest].contiguous(), y[:, rest].contiguous(), loss_sum)

    def _native_train(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        loss_sum: Tensor | None,
        order: Tensor | None = None,
    ) -> None:
        xc, yc, W, b = self._native_args(x, y)
        gW = native.pointers([m.grad_weight for m in self.layers])
        gb = native.pointers([m.grad_bias for m in self.layers])
        R, N = xc.shape[0], xc.shape[1]
        lr = self.optimizer.lr
        rates = lr.to(torch.float32) if isinstance(lr, Tensor) else torch.full((R,), lr)
        rates = rates.expand(R).contiguous()
        losses = torch.zeros(R, dtype=torch.float64) if loss_sum is not None else None
        order = None if order is None else order.contiguous()
        M = N if order is None else order.shape[1]
        if M == 0:
            return
        if self.native_layout not in NATIVE_LAYOUTS:
            raise ValueError(
                f"FusedMLPStep: native_layout={self.native_layout!r} is not known; accepted: "
                f"{', '.join(NATIVE_LAYOUTS)}."
            )
        rc = self._native.mt_train(
            R, N, M, batch_size, xc.data_ptr(), yc.data_ptr(),
            None if order is None else order.data_ptr(), W, b, gW, gb,
            rates.data_ptr(), None if losses is None else losses.data_ptr(), self._threads(),
            NATIVE_LAYOUTS.index(self.native_layout),
        )  # fmt: skip
        if rc == 3:
            raise IndexError(f"FusedMLPStep.epoch: order has indices outside [0, {N}).")
        _check_rc(rc)
        if loss_sum is not None:
            loss_sum.add_(losses.to(loss_sum.dtype))

    def step(self, x: Tensor, y: Tensor, loss_sum: Tensor | None = None) -> None:
        """Forward, loss, backward and the SGD update for one batch."""
        if self.replicas is None:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        if self._native is not None:
            self._native_train(x, y, x.shape[1], loss_sum)
            return
        self._step3(x, y, loss_sum)

    def _step3(self, x: Tensor, y: Tensor, loss_sum: Tensor | None) -> None:
        """`step` on [R, B, f] inputs with the torch or numpy kernel."""
        buf = self._buffers_for(x)
        z, g, gh, tmp = buf["z"], buf["g"], buf["gh"], buf["tmp"]
        n_last = len(self.layers) - 1
        self._forward(x, buf)

        # Loss gradient wrt the output, scaled by each replica's own element count.
        out, go = z[n_last], g[n_last]
        n = out.shape[1] * out.shape[2]
        torch.sub(out, y, out=go)
        if loss_sum is not None:
            if self.loss_kind == "mse":
                loss_sum.add_(torch.mul(go, go, out=tmp[n_last]).sum((1, 2)), alpha=1.0 / n)
            else:
                loss_sum.add_(torch.abs(go, out=tmp[n_last]).sum((1, 2)), alpha=1.0 / n)
        if self.loss_kind == "mse":
            go.mul_(2.0 / n)
        else:
            go.sign_().mul_(1.0 / n)
        kernel = self.kernel
        if kernel == "auto":
            kernel = "numpy" if torch.get_num_threads() == 1 else "torch"
        if kernel == "numpy":
            self._backward_numpy(x, buf)
            self.optimizer.step()
            return
        for i in range(n_last, -1, -1):
            if i == 0:
                # Few inputs: x^T g is [in, out] with a long inner dimension, far faster than
                # g^T x; transposing the small result back costs little.
                torch.bmm(x.transpose(1, 2).contiguous(), g[0], out=buf["gw0_t"][0])
                self.gW[0].copy_(buf["gw0_t"][0].transpose(1, 2))
            else:
                torch.bmm(buf["gt"][i], z[i - 1], out=self.gW[i])
            torch.sum(g[i], 1, out=self.gb[i])
            if i > 0:
                torch.bmm(g[i], self.W[i], out=gh[i])
                _act_backward(*self._saved(buf, i - 1), gh[i], tmp[i - 1], out=g[i - 1])
        self.optimizer.step()

    def _saved(self, buf: dict[str, list[Tensor]], i: int) -> tuple[str, Tensor]:
        """How hidden layer i's activation backward runs, and the saved tensor it reads."""
        if self.acts[i] == "tanh" and self.tanh_grad == "report":
            return "tanh_report", buf["d"][i]
        return self.acts[i], buf["z"][i]

    def _backward_numpy(self, x: Tensor, buf: dict[str, list[Tensor]]) -> None:
        g, gh, tmp = buf["g"], buf["gh"], buf["tmp"]
        zn, gn, gtn, ghn = buf["np_z"], buf["np_g"], buf["np_gt"], buf["np_gh"]
        xn = x.numpy()
        # A diverging replica overflows to inf/nan as in torch; numpy would also warn about it.
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(len(self.layers) - 1, -1, -1):
                np.matmul(gtn[i], xn if i == 0 else zn[i - 1], out=self.np_gW[i])
                torch.sum(g[i], 1, out=self.gb[i])
                if i > 0:
                    np.matmul(gn[i], self.np_W[i], out=ghn[i])
                    _act_backward(*self._saved(buf, i - 1), gh[i], tmp[i - 1], out=g[i - 1])


KERNELS = ("auto", "native", "numpy", "torch")
NATIVE_LAYOUTS = ("auto", "rows", "lanes")  # mt_train's layout argument, in its order


def _mlp_parts(model: Sequential) -> tuple[list[Linear], list[str], str]:
    """The Linear layers, the activation names and the Tanh derivative of an MLP, checked."""
    layers: list[Linear] = []
    acts: list[str] = []
    tanh_grads: set[str] = set()
    for i, m in enumerate(model.modules):
        want_linear = i % 2 == 0
        if want_linear and isinstance(m, Linear):
            layers.append(m)
        elif not want_linear and isinstance(m, (Tanh, Sigmoid, ReLU)):
            acts.append(type(m).__name__.lower())
            if isinstance(m, Tanh):
                tanh_grads.add(m.grad)
        else:
            raise TypeError(
                f"FusedMLPStep: module {i} is {m!r}; expected alternating Linear and "
                "ReLU/Tanh/Sigmoid modules, starting and ending with Linear."
            )
    if len(layers) != len(acts) + 1 or not acts:
        raise TypeError(
            "FusedMLPStep: the model must have at least one hidden layer and end with a "
            "Linear layer."
        )
    if len(tanh_grads) > 1:
        raise TypeError(
            f"FusedMLPStep: the model's Tanh modules mix derivatives {sorted(tanh_grads)}; "
            "expected one for all (mlp(..., tanh_grad=...) builds such a model)."
        )
    return layers, acts, tanh_grads.pop() if tanh_grads else "exact"


def _check_rc(rc: int) -> None:
    if rc == 1:
        raise MemoryError("FusedMLPStep: the native kernel could not allocate its buffers.")
    if rc != 0:
        raise RuntimeError(f"FusedMLPStep: the native kernel refused its inputs (code {rc}).")


def _act_forward_(name: str, z: Tensor) -> None:
    """Apply the activation in place; the result is also what its backward needs."""
    if name == "sigmoid":
        torch.sigmoid(z, out=z)
    else:
        torch.relu_(z)


def _act_backward(name: str, a: Tensor, grad: Tensor, tmp: Tensor, out: Tensor) -> None:
    """out = grad * f'(z), from the saved activation a = f(z) (for "tanh_report", a = f'(z))."""
    if name == "tanh_report":  # the report's 2 sech(z), saved by the forward
        torch.mul(grad, a, out=out)
    elif name == "tanh":  # 1 - t^2
        torch.addcmul(grad, torch.mul(grad, a, out=tmp), a, value=-1, out=out)
    elif name == "sigmoid":  # s (1 - s)
        torch.mul(grad, a, out=tmp)
        torch.addcmul(tmp, tmp, a, value=-1, out=out)
    else:  # 1[z > 0] == 1[relu(z) > 0]
        torch.mul(grad, a > 0, out=out)
