"""The module protocol: forward saves what backward needs, backward fills gradients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from torch import Tensor

Param = tuple[Tensor, Tensor]


class Module:
    """Base class: `forward(x)`, `backward(grad_out) -> grad_in`, `params() -> [(param, grad)]`.

    Unlike torch.nn there is no autograd: every module writes its own backward, and backward
    only fills gradients; updating the parameters is the optimizer's job.

    `kind` is the one way a module tells the fused fast path (minitorch.fast) what it is: the
    name of a layer or activation the fast path can compile ("linear", "tanh", ...), or None.
    A subclass that changes the math must not keep its parent's kind.
    """

    kind: ClassVar[str | None] = None

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def backward(self, grad_out: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.backward is not implemented")

    def params(self) -> list[Param]:
        """Pairs (parameter, gradient), in a fixed order; gradients are filled by backward."""
        return []

    def zero_grad(self) -> None:
        for _, grad in self.params():
            grad.zero_()

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _need_saved(self, saved: Tensor | None) -> Tensor:
        # The report's modules silently reused stale inputs; we refuse instead.
        if saved is None:
            raise RuntimeError(
                f"{self!r}: backward() was called before forward(); call forward(x) first so "
                "the module can save what its gradient needs."
            )
        return saved


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(
                    f"Sequential: argument {i} is {m!r} of type {type(m).__name__}; "
                    "expected a minitorch Module."
                )
        self.modules: list[Module] = list(modules)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = m.forward(x)
        return x

    def backward(self, grad_out: Tensor) -> Tensor:
        for m in reversed(self.modules):
            grad_out = m.backward(grad_out)
        return grad_out

    def params(self) -> list[Param]:
        return [p for m in self.modules for p in m.params()]

    def named_params(self) -> Iterator[tuple[str, Tensor]]:
        """Names like torch's state_dict keys ("0.weight", "0.bias", ...) with the tensors."""
        for i, m in enumerate(self.modules):
            for name, (param, _) in zip(("weight", "bias"), m.params(), strict=False):
                yield f"{i}.{name}", param

    def state_dict(self) -> dict[str, Tensor]:
        return {name: p.clone() for name, p in self.named_params()}

    def __getitem__(self, i: int) -> Module:
        return self.modules[i]

    def __len__(self) -> int:
        return len(self.modules)

    def __repr__(self) -> str:
        lines = [f"  ({i}): {m!r}" for i, m in enumerate(self.modules)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
