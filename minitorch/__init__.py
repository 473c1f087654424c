"""minitorch: a mini deep-learning framework on torch tensors, with hand-written gradients.

No torch.autograd, torch.nn or torch.optim inside: every module computes its own backward.
"""

from minitorch import native
from minitorch.activations import ACTIVATIONS, TANH_GRADS, ReLU, Sigmoid, Tanh
from minitorch.fused import FusedMLPStep
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
