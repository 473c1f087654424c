"""Checkpoints of train_replicas: a stopped job resumes and ends as if it had never stopped."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch

import minitorch as mt
from experiments.spec import TrainSpec
from experiments.training import (
    CHECKPOINT_EVERY,
    Checkpointing,
    TrainResult,
    clear_checkpoints,
    train_replicas,
)

SEEDS = [0, 1, 2, 3]
# Seed 1 at lr 0.9 diverges at epoch 3: resumed runs must freeze it exactly as a straight one.
KW = dict(epochs=60, eval_every=2, n_train=200, n_test=100, lr=[0.01, 0.9, 0.01, 0.01])


def spec(**changes) -> TrainSpec:
    """The tests' settings (KW), with `changes`."""
    return TrainSpec(**{**KW, **changes})


FIELDS = ("train_loss", "test_loss", "train_acc", "test_acc", "diverged", "diverged_epoch")


class Stop(Exception):
    """Stands for a kill: raised from the progress callback mid-training."""


def stop_at(epoch: int, wait_for: Path | None = None):
    """A progress callback that stops training at `epoch` (once `wait_for` exists, if given)."""

    def progress(e: int) -> None:
        if e == epoch:
            deadline = time.monotonic() + 60
            while wait_for is not None and not wait_for.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise Stop

    return progress


def assert_same(got: TrainResult, want: TrainResult) -> None:
    """Equal to 1e-6, and bitwise where the native kernel trains (it is deterministic)."""
    bitwise = _native_available()
    pairs = [(n, getattr(got, n), getattr(want, n)) for n in FIELDS]
    pairs += [(k, got.state[k], want.state[k]) for k in want.state]
    for name, a, b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, equal_nan=True, msg=name)
        if bitwise:
            assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0)), f"{name} not bitwise"
    assert got.seeds == want.seeds


def _native_available() -> bool:
    try:
        mt.native.load((2, 25, 25, 25, 2), ("tanh",) * 3, "mse")
    except mt.native.NativeUnavailable:
        return False
    return True


@pytest.fixture(scope="module")
def straight() -> dict[int, TrainResult]:
    """Uninterrupted runs, by number of workers."""
    return {w: train_replicas(SEEDS, spec(workers=w)) for w in (1, 2)}


@pytest.mark.parametrize(
    "workers, every, stop, resumed",
    [
        (1, 1, 2, [1] * 4),  # resumes at epoch 1: the divergence at 3 happens after the resume
        (1, 7, 30, [28] * 4),  # after it
        (2, 7, 30, None),  # each shard from its own file
    ],
)
def test_a_stopped_job_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path, straight, workers, every, stop, resumed
):
    ck = Checkpointing(tmp_path / "ck", every=every)
    # With two workers the parent stops once the worker's shard has saved at least once.
    other = tmp_path / "ck" / "shard-2-2.pt" if workers == 2 else None
    with pytest.raises(Stop):
        train_replicas(SEEDS, spec(workers=workers), checkpoint=ck, progress=stop_at(stop, other))
    files = sorted(p.name for p in ck.folder.glob("shard-*.pt"))  # a kill mid-save leaves a .tmp
    assert files == (["shard-0-4.pt"] if workers == 1 else ["shard-0-2.pt", "shard-2-2.pt"])
    got = train_replicas(SEEDS, spec(workers=workers), checkpoint=ck)
    assert_same(got, straight[workers])
    assert got.diverged.tolist() == [False, True, False, False]
    if resumed is not None:
        assert got.resumed_from.tolist() == resumed
    else:
        assert got.resumed_from[:2].tolist() == [28, 28] and (got.resumed_from[2:] > 0).all()


def test_a_finished_job_started_again_returns_its_results_without_training(tmp_path, straight):
    ck = Checkpointing(tmp_path, every=25)
    first = train_replicas(SEEDS, spec(), checkpoint=ck)
    again = train_replicas(SEEDS, spec(), checkpoint=ck)
    assert again.resumed_from.tolist() == [60] * 4
    assert again.timings["train"] == 0.0 and again.timings["eval"] == 0.0
    assert_same(first, straight[1])
    assert_same(again, straight[1])


@pytest.mark.parametrize(
    "change, differ",
    [(dict(lr=0.02), "lr"), (dict(epochs=62), "epochs"), (dict(encoding="pm1"), "encoding")],
)
def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, caplog, change, differ):
    ck = Checkpointing(tmp_path, every=5)
    with pytest.raises(Stop):
        train_replicas(SEEDS, spec(), checkpoint=ck, progress=stop_at(20))
    other = spec(**change)
    with caplog.at_level(logging.WARNING, logger="experiments.training"):
        got = train_replicas(SEEDS, other, checkpoint=ck)
    assert got.resumed_from.tolist() == [0] * 4
    assert f"was saved with other settings ({differ} differ); not resumed" in caplog.text
    assert_same(got, train_replicas(SEEDS, other))


def test_checkpoints_of_another_number_of_workers_are_named_and_not_resumed(
    tmp_path, caplog, straight
):
    ck = Checkpointing(tmp_path, every=5)
    with pytest.raises(Stop):
        progress = stop_at(20, wait_for=tmp_path / "shard-2-2.pt")
        train_replicas(SEEDS, spec(workers=2), checkpoint=ck, progress=progress)
    with caplog.at_level(logging.WARNING, logger="experiments.training"):
        got = train_replicas(SEEDS, spec(workers=1), checkpoint=ck)
    assert "checkpoints shard-0-2.pt, shard-2-2.pt in " in caplog.text
    assert "are not resumed; this job's shards save to shard-0-4.pt" in caplog.text
    assert got.resumed_from.tolist() == [0] * 4
    assert_same(got, straight[1])


def test_an_unreadable_checkpoint_is_not_resumed(tmp_path, caplog, straight):
    (tmp_path / "shard-0-4.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="experiments.training"):
        got = train_replicas(SEEDS, spec(), checkpoint=Checkpointing(tmp_path, every=10))
    assert "shard-0-4.pt cannot be read" in caplog.text
    assert got.resumed_from.tolist() == [0] * 4
    assert_same(got, straight[1])


def test_a_leftover_temporary_file_is_ignored_and_cleared(tmp_path, straight):
    ck = Checkpointing(tmp_path / "ck", every=10)
    with pytest.raises(Stop):
        train_replicas(SEEDS, spec(), checkpoint=ck, progress=stop_at(24))
    # What a kill during a save leaves: a partial temporary file beside the last checkpoint.
    (ck.folder / ".shard-0-4.pt.k3j2x9.tmp").write_bytes(b"partial")
    got = train_replicas(SEEDS, spec(), checkpoint=ck)
    assert got.resumed_from.tolist() == [20] * 4
    assert_same(got, straight[1])
    assert clear_checkpoints(ck.folder) == 2  # the final checkpoint and the leftover
    assert not ck.folder.exists()
    assert clear_checkpoints(ck.folder) == 0


def test_a_failed_save_keeps_the_previous_checkpoint_and_training_goes_on(
    tmp_path, caplog, monkeypatch, straight
):
    ck = Checkpointing(tmp_path, every=10)
    with pytest.raises(Stop):
        train_replicas(SEEDS, spec(), checkpoint=ck, progress=stop_at(12))
    saved = (tmp_path / "shard-0-4.pt").read_bytes()
    calls = []

    def full_disk(fd: int) -> None:
        calls.append(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with caplog.at_level(logging.WARNING, logger="experiments.training"):
        got = train_replicas(SEEDS, spec(), checkpoint=ck)
    assert len(calls) == 5  # epochs 20, 30, 40, 50 and the final save all failed
    assert caplog.text.count("cannot write checkpoint") == 1
    assert "No space left on device" in caplog.text
    assert_same(got, straight[1])
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0-4.pt"]  # no temporary file left
    assert (tmp_path / "shard-0-4.pt").read_bytes() == saved


def test_every_0_writes_nothing_and_bad_values_are_named(tmp_path):
    train_replicas(SEEDS, spec(), checkpoint=Checkpointing(tmp_path / "off", every=0))
    assert not (tmp_path / "off").exists()
    assert Checkpointing(tmp_path).every == CHECKPOINT_EVERY
    with pytest.raises(ValueError, match=r"every=-1 is not accepted; expected an integer >= 0"):
        Checkpointing(tmp_path, every=-1)
    with pytest.raises(ValueError, match=r"checkpoint='x' is not accepted; expected None or a"):
        train_replicas(SEEDS, spec(), checkpoint="x")


def test_the_checkpoint_holds_the_state_the_issue_asks_for(tmp_path):
    with pytest.raises(Stop):
        train_replicas(
            SEEDS, spec(), checkpoint=Checkpointing(tmp_path, every=10), progress=stop_at(12)
        )
    state = torch.load(tmp_path / "shard-0-4.pt", weights_only=True)
    assert state["epoch"] == 10 and state["next_eval"] == 6  # points 0, 2, ..., 10 done
    assert state["metrics"].shape == (4, 4, 6)
    assert state["shuffle"].shape[0] == 4 and state["rates"].tolist()[1] == 0.0
    assert state["fingerprint"]["seeds"] == SEEDS
    assert set(state["params"]) == {f"{i}.{n}" for i in (0, 2, 4, 6) for n in ("weight", "bias")}
