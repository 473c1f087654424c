"""The report's test problem: points in [0, 1]^2 labelled by a disk of area 1/2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from minitorch import seeded_generator

RADIUS = 1.0 / math.sqrt(2.0 * math.pi)  # pi r^2 = 1/2: the classes balance
CENTRE = (0.5, 0.5)
ENCODINGS = ("onehot", "pm1")


@dataclass
class DiskData:
    """Inputs [.., n, 2], labels [.., n] (int64, 1 inside the disk), targets [.., n, 2]."""

    x: Tensor
    labels: Tensor
    targets: Tensor


def encode_targets(labels: Tensor, encoding: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """onehot: 0 -> [1, 0], 1 -> [0, 1]; pm1 (tried by the report): 0 -> [1, -1], 1 -> [-1, 1]."""
    onehot = torch.stack([1 - labels, labels], dim=-1).to(dtype)
    if encoding == "onehot":
        return onehot
    if encoding == "pm1":
        return 2 * onehot - 1
    raise ValueError(f"encoding={encoding!r} is not known; accepted: {', '.join(ENCODINGS)}.")


def disk_points(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """n points uniform in [0, 1]^2 and their labels (1 inside the disk)."""
    x = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    inside = ((x - torch.tensor(CENTRE, dtype=torch.float64)) ** 2).sum(1) < RADIUS**2
    return x.to(dtype), inside.long()


def disk_dataset(
    seed: int,
    n_train: int = 1000,
    n_test: int = 1000,
    encoding: str = "onehot",
    dtype: torch.dtype = torch.float32,
) -> tuple[DiskData, DiskData]:
    """Train and test sets of one seed, drawn in that order from the seed's data stream."""
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"disk_dataset: n_train={n_train}, n_test={n_test}; expected both > 0.")
    g = seeded_generator(seed, "data")
    out = []
    for n in (n_train, n_test):
        x, labels = disk_points(n, g, dtype)
        out.append(DiskData(x, labels, encode_targets(labels, encoding, dtype)))
    return out[0], out[1]


def disk_replicas(
    seeds: Sequence[int],
    n_train: int = 1000,
    n_test: int = 1000,
    encoding: str = "onehot",
    dtype: torch.dtype = torch.float32,
) -> tuple[DiskData, DiskData]:
    """Stacked datasets, one per seed, along a leading replica axis: x is [R, n, 2]."""
    pairs = [disk_dataset(s, n_train, n_test, encoding, dtype) for s in seeds]
    stacked = []
    for k in range(2):
        parts = [p[k] for p in pairs]
        stacked.append(
            DiskData(
                torch.stack([d.x for d in parts]),
                torch.stack([d.labels for d in parts]),
                torch.stack([d.targets for d in parts]),
            )
        )
    return stacked[0], stacked[1]
