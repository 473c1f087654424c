"""Weight initialisation schemes, deterministic from a torch.Generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor

INIT_SCHEMES = ("torch", "xavier", "normal")


def init_linear(
    in_features: int,
    out_features: int,
    scheme: str,
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Return (weight [out, in], bias [out]) drawn from `generator`, weight first.

    - torch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as torch.nn.Linear.
    - xavier: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) for weight, zero bias.
    - normal: N(0, 1/fan_in) for weight (LeCun normal), zero bias.
    """
    weight = torch.empty(out_features, in_features, dtype=dtype)
    bias = torch.empty(out_features, dtype=dtype)
    if scheme == "torch":
        bound = 1.0 / math.sqrt(in_features)
        weight.uniform_(-bound, bound, generator=generator)
        bias.uniform_(-bound, bound, generator=generator)
    elif scheme == "xavier":
        bound = math.sqrt(6.0 / (in_features + out_features))
        weight.uniform_(-bound, bound, generator=generator)
        bias.zero_()
    elif scheme == "normal":
        weight.normal_(0.0, 1.0 / math.sqrt(in_features), generator=generator)
        bias.zero_()
    else:
        raise ValueError(
            f"init={scheme!r} is not a known initialisation scheme; "
            f"accepted: {', '.join(INIT_SCHEMES)}."
        )
    return weight, bias


def seeded_generator(seed: int, stream: str) -> torch.Generator:
    """A generator for one purpose (`stream`: "data", "init", "shuffle") of one seed.

    Streams of one seed are independent, and nothing depends on any other seed: replica r of a
    batch and the same seed run alone draw exactly the same numbers.
    """
    # A fixed mixing of (seed, stream) into 63 bits; Python's hash() is salted per process.
    h = seed & 0xFFFFFFFFFFFFFFFF
    for ch in stream.encode():
        h = (h ^ ch) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(h & 0x7FFFFFFFFFFFFFFF)
