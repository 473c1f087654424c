"""minitorch: a mini deep-learning framework on torch tensors, with hand-written gradients.

No torch.autograd, torch.nn or torch.optim inside: every module computes its own backward.
`minitorch.fast` holds the fused fast path (`FusedMLPStep`, its kernels `KERNELS`); `native` is
its kernel builder (minitorch.fast.native), re-exported as `minitorch.native`.
"""

from minitorch.activations import ACTIVATIONS, TANH_GRADS, ReLU, Sigmoid, Tanh
from minitorch.fast import KERNELS, FusedMLPStep, native
from minitorch.init import INIT_SCHEMES, init_linear, seeded_generator
from minitorch.linear import Linear
from minitorch.losses import LOSSES, MAE, MSE, Loss
from minitorch.mlp import mlp
from minitorch.module import Module, Sequential
from minitorch.optim import SGD

__all__ = [
    "ACTIVATIONS",
    "FusedMLPStep",
    "INIT_SCHEMES",
    "KERNELS",
    "LOSSES",
    "MAE",
    "MSE",
    "SGD",
    "TANH_GRADS",
    "Linear",
    "Loss",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "init_linear",
    "mlp",
    "native",
    "seeded_generator",
]
