"""The disk dataset of the report."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.data import RADIUS, disk_dataset, disk_replicas, encode_targets


def test_disk_has_area_one_half_and_labels_match_geometry():
    train, test = disk_dataset(0, n_train=20000, n_test=10)
    assert abs(RADIUS - 1 / math.sqrt(2 * math.pi)) < 1e-15
    assert train.x.min() >= 0 and train.x.max() <= 1
    inside = ((train.x.double() - 0.5) ** 2).sum(1) < RADIUS**2
    assert torch.equal(inside.long(), train.labels)
    # Balanced classes: 20000 draws of p = 1/2 -> std 0.0035.
    assert abs(train.labels.double().mean().item() - 0.5) < 0.015


def test_encodings():
    labels = torch.tensor([0, 1])
    assert encode_targets(labels, "onehot").tolist() == [[1, 0], [0, 1]]
    assert encode_targets(labels, "pm1").tolist() == [[1, -1], [-1, 1]]
    with pytest.raises(ValueError, match=r"encoding='binary' is not known; accepted: onehot, pm1"):
        encode_targets(labels, "binary")


def test_seeded_and_replicas_stack_single_seeds():
    a_train, a_test = disk_dataset(7, 100, 50)
    b_train, _ = disk_dataset(7, 100, 50)
    assert torch.equal(a_train.x, b_train.x)
    assert not torch.equal(a_train.x, disk_dataset(8, 100, 50)[0].x)
    train, test = disk_replicas([5, 6, 7], 100, 50)
    assert train.x.shape == (3, 100, 2) and test.targets.shape == (3, 50, 2)
    assert torch.equal(train.x[2], a_train.x) and torch.equal(test.labels[2], a_test.labels)
