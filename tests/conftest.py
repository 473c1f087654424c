"""Shared test settings."""

import torch

# Tiny tensors: one thread avoids OpenMP hand-off costs, and the CI machine has 2 cores.
torch.set_num_threads(1)
