"""The torch kernel of the fused step: torch.bmm / baddbmm on preallocated buffers.

The reference fallback, for any dtype and wherever the native kernel cannot be built: the same
math as the modules with far fewer Python calls (~32 torch calls a step, MKL's batched GEMM in
the CPU build of torch), then the optimizer's own `SGD.step` for the update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from minitorch.activations import report_tanh_grad
from minitorch.fast.parts import MLPParts

Buffers = dict[str, list[Tensor]]


class TorchKernel:
    """Steps and epochs of an MLP on [R, B, f] inputs; `update` applies SGD's step."""

    name = "torch"

    def __init__(self, parts: MLPParts, loss_kind: str, update: Callable[[], None]) -> None:
        self.parts = parts
        self.loss_kind = loss_kind
        self.update = update
        # Everything runs on [R, B, f] views; a model without replicas is viewed as R = 1.
        as3 = (lambda t: t.unsqueeze(0)) if parts.replicas is None else (lambda t: t)
        self.W = [as3(w) for w in parts.weights]
        self.b = [as3(b).unsqueeze(1) for b in parts.biases]  # [R, 1, out]
        self.Wt = [w.transpose(1, 2) for w in self.W]
        self.bt_last = self.b[-1].transpose(1, 2)  # [R, out, 1]
        self.gW = [as3(g) for g in parts.grad_weights]
        self.gb = [as3(g) for g in parts.grad_biases]
        self._minus_one = torch.tensor(-1.0, dtype=parts.dtype)
        self._buffers: dict[tuple[int, bool], Buffers] = {}

    def forward(self, x: Tensor) -> Tensor:
        """The output for x [R, B, in], in a cached buffer valid until the next call."""
        return self._forward(x, self._buffers_for(x, train=False))

    def epoch(
        self, x: Tensor, y: Tensor, batch_size: int, loss_sum: Tensor | None, order: Tensor | None
    ) -> None:
        """`step` on each batch of rows in turn (rows in `order` if given, [R, M] int64)."""
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
                self.step(xb[s], yb[s], loss_sum)
        if n_full * batch_size < N:
            rest = slice(n_full * batch_size, N)
            self.step(x[:, rest].contiguous(), y[:, rest].contiguous(), loss_sum)

    def step(self, x: Tensor, y: Tensor, loss_sum: Tensor | None) -> None:
        """Forward, loss gradient, backward, then the optimizer's update, for [R, B, f]."""
        buf = self._buffers_for(x)
        self._forward(x, buf)
        self._loss_grad(y, buf, loss_sum)
        self._backward(x, buf)
        self.update()

    def _loss_grad(self, y: Tensor, buf: Buffers, loss_sum: Tensor | None) -> None:
        """Loss gradient wrt the output, scaled by each replica's own element count."""
        n_last = len(self.W) - 1
        out, go, tmp = buf["z"][n_last], buf["g"][n_last], buf["tmp"][n_last]
        n = out.shape[1] * out.shape[2]
        torch.sub(out, y, out=go)
        if loss_sum is not None:
            if self.loss_kind == "mse":
                loss_sum.add_(torch.mul(go, go, out=tmp).sum((1, 2)), alpha=1.0 / n)
            else:
                loss_sum.add_(torch.abs(go, out=tmp).sum((1, 2)), alpha=1.0 / n)
        if self.loss_kind == "mse":
            go.mul_(2.0 / n)
        else:
            go.sign_().mul_(1.0 / n)

    def _backward(self, x: Tensor, buf: Buffers) -> None:
        """The model's gradient tensors from the output gradient in buf["g"]."""
        z, g, gh, tmp = buf["z"], buf["g"], buf["gh"], buf["tmp"]
        for i in range(len(self.W) - 1, -1, -1):
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

    def _forward(self, x: Tensor, buf: Buffers) -> Tensor:
        z = buf["z"]
        n_last = len(self.W) - 1
        h = x
        for i in range(n_last):
            if self.parts.activations[i] == "tanh":
                # tanh(z) = 2 sigmoid(2z) - 1; the 2z is folded into the product.
                torch.baddbmm(self.b[i], h, self.Wt[i], beta=2, alpha=2, out=z[i])
                if buf.get("d"):  # training with the report's derivative: save 2 sech(z)
                    report_tanh_grad(torch.mul(z[i], 0.5, out=buf["d"][i]), out=buf["d"][i])
                torch.sigmoid(z[i], out=z[i])
                torch.add(self._minus_one, z[i], alpha=2, out=z[i])
            else:
                torch.baddbmm(self.b[i], h, self.Wt[i], out=z[i])
                _act_forward_(self.parts.activations[i], z[i])
            h = z[i]
        # Few outputs: [out, hidden] x [hidden, B] is a far better shape for the BLAS than
        # [B, hidden] x [hidden, out], and the [R, out, B] result is small to transpose back.
        torch.baddbmm(self.bt_last, self.W[n_last], buf["zt"][n_last - 1], out=buf["last_t"][0])
        z[n_last].copy_(buf["last_t"][0].transpose(1, 2))
        return z[n_last]

    def _buffers_for(self, x: Tensor, train: bool = True) -> Buffers:
        """Buffers for one input shape, made once; gradient buffers only for training."""
        R, B = x.shape[0], x.shape[1]
        key = (B, train)
        buf = self._buffers.get(key)
        if buf is None:
            new = lambda n: torch.empty(R, B, n, dtype=x.dtype)  # noqa: E731
            ins, outs = self.parts.sizes[:-1], self.parts.sizes[1:]
            buf = {"z": [new(n) for n in outs]}  # pre-activations, then activations (in place)
            buf["zt"] = [t.transpose(1, 2) for t in buf["z"]]
            buf["last_t"] = [torch.empty(R, outs[-1], B, dtype=x.dtype)]
            if train:
                buf["g"] = [new(n) for n in outs]  # gradient wrt each layer's output
                buf["gt"] = [t.transpose(1, 2) for t in buf["g"]]
                buf["gh"] = [new(n) for n in ins]  # gradient wrt each layer's input
                buf["tmp"] = [new(n) for n in outs]
                # The report's tanh derivative, 2 sech(z), from the pre-activation z: the
                # forward overwrites z with tanh(z), from which it would lose its precision.
                report = self.parts.tanh_grad == "report"
                buf["d"] = [new(n) for n in outs[:-1]] if report else []
                buf["gw0_t"] = [torch.empty(R, ins[0], outs[0], dtype=x.dtype)]
            self._buffers[key] = buf
        return buf

    def _saved(self, buf: Buffers, i: int) -> tuple[str, Tensor]:
        """How hidden layer i's activation backward runs, and the saved tensor it reads."""
        act = self.parts.activations[i]
        if act == "tanh" and self.parts.tanh_grad == "report":
            return "tanh_report", buf["d"][i]
        return act, buf["z"][i]


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
