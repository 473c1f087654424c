"""The fused fast path: whole SGD epochs of an MLP, behind one small interface.

`FusedMLPStep(model, loss, sgd, kernel=...)` fuses, per batch and for a whole epoch, the
forward, the loss gradient, the backward and the SGD update that `Sequential` + `SGD.step` do
one call at a time. It reads the model through `mlp_parts` (each module's declared `kind`) and
the optimizer through `SGD.replica_lrs` / `SGD.step`, and runs one of `KERNELS`' kernels, chosen
once at construction: native (native_kernel.py, the C++ in csrc/ built by native.py) or torch
(torch_kernel.py, the reference fallback).
"""

from minitorch.fast import native
from minitorch.fast.native_kernel import NATIVE_LAYOUTS
from minitorch.fast.parts import MLPParts, loss_kind, mlp_parts
from minitorch.fast.step import KERNELS, FusedMLPStep

__all__ = [
    "KERNELS",
    "NATIVE_LAYOUTS",
    "FusedMLPStep",
    "MLPParts",
    "loss_kind",
    "mlp_parts",
    "native",
]
