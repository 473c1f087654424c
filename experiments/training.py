"""Replica-batched training of the test model: plain values in, tensors of metrics out.

No Hydra and no MLflow here, so the loop can be tested and benchmarked alone. Optionally each
shard (the replicas one process trains) checkpoints its state every few epochs and resumes from
it when started again with the same settings, ending exactly as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import minitorch as mt
from experiments.data import DiskData, disk_replicas
from experiments.processes import init_worker, kill_pool
from experiments.spec import TrainSpec

log = logging.getLogger(__name__)

IN_FEATURES = 2
OUT_FEATURES = 2
# Measured with benchmarks/checkpoint.py: < 2% of training time for the report and grid jobs.
CHECKPOINT_EVERY = 500
CHECKPOINT_FORMAT = 1  # bump when the checkpoint's content changes: older ones are then ignored
# The TrainSpec fields a shard's numbers depend on (with its seeds and rates): a checkpoint
# resumes only under the same values. Not workers, threads (the same bits) nor the kernel.
FINGERPRINT_FIELDS = ("hidden", "activations", "init", "loss", "batch_size", "epochs",
                      "eval_every", "n_train", "n_test", "encoding", "tanh_grad")  # fmt: skip
_TMP_SUFFIX = ".tmp"
TRAINED_FILE = "trained.pt"  # a job's results, trained by another job (save_trained)


_CURVE_FIELDS = ("train_loss", "test_loss", "train_acc", "test_acc")


@dataclass
class TrainResult:
    """Metrics of R replicas at E evaluation points, and their final weights."""

    seeds: list[int]
    eval_epochs: Tensor  # [E] int64: 0, eval_every, ..., epochs
    train_loss: Tensor  # [R, E] float64
    test_loss: Tensor
    train_acc: Tensor  # fraction in [0, 1]
    test_acc: Tensor
    diverged: Tensor  # [R] bool
    diverged_epoch: Tensor  # [R] int64, -1 when not diverged
    state: dict[str, Tensor]  # "0.weight": [R, out, in], ...
    timings: dict[str, float] = field(default_factory=dict)  # this process's seconds, by part
    resumed_from: Tensor | None = None  # [R] int64: checkpoint epoch trained on from, 0 if none
    # The kernel that trained: "native", or "torch" (minitorch's fallback, ~17x slower) if any
    # shard used it; "" where not recorded (bundles written before it was).
    kernel: str = ""
    # Trained in one batch with other jobs' replicas (experiments/lr_groups.py): which, and
    # where; "" when trained alone.
    trained_with: str = ""

    def take(self, first: int, n: int) -> TrainResult:
        """Replicas first .. first+n-1 (copies), with their share of the timings (n/R: a
        batch's time split by replica)."""
        share = n / len(self.seeds)
        rows = slice(first, first + n)
        part = lambda t: t[rows].clone()  # noqa: E731
        return TrainResult(
            seeds=self.seeds[rows],
            eval_epochs=self.eval_epochs.clone(),
            **{k: part(getattr(self, k)) for k in (*_CURVE_FIELDS, "diverged", "diverged_epoch")},
            state={k: part(v) for k, v in self.state.items()},
            timings={k: v * share for k, v in self.timings.items()},
            resumed_from=None if self.resumed_from is None else part(self.resumed_from),
            kernel=self.kernel,
            trained_with=self.trained_with,
        )

    @staticmethod
    def concat(parts: Sequence[TrainResult]) -> TrainResult:
        """Join results of disjoint replica shards along the replica axis, in order."""
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        resumed = None if any(p.resumed_from is None for p in parts) else cat("resumed_from")
        return TrainResult(
            seeds=[s for p in parts for s in p.seeds],
            eval_epochs=parts[0].eval_epochs,
            train_loss=cat("train_loss"),
            test_loss=cat("test_loss"),
            train_acc=cat("train_acc"),
            test_acc=cat("test_acc"),
            diverged=cat("diverged"),
            diverged_epoch=cat("diverged_epoch"),
            state={k: torch.cat([p.state[k] for p in parts]) for k in parts[0].state},
            # Shards run in parallel: the job took as long as its slowest shard.
            timings={k: max(p.timings.get(k, 0.0) for p in parts) for k in parts[0].timings},
            resumed_from=resumed,
            kernel="native" if all(p.kernel == "native" for p in parts) else "torch",
        )


@dataclass(frozen=True)
class Checkpointing:
    """Where each shard saves its training state, and how often (epochs; 0 turns it off)."""

    folder: Path
    every: int = CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(
                f"Checkpointing: every={self.every!r} is not accepted; expected an integer >= 0 "
                "(epochs between checkpoints; 0 turns them off)."
            )


@dataclass(frozen=True)
class LiveCurves:
    """The evaluation points of every replica, in memory shared with the worker processes, so
    the job's process can send progress while the shards train (experiments/live.py)."""

    metrics: Tensor  # [4, R, E] float64: train loss, test loss, train acc, test acc; NaN at first
    done: Tensor  # [R] int64: evaluation points written so far, per replica

    @staticmethod
    def create(n_replicas: int, n_points: int) -> LiveCurves:
        metrics = torch.full((4, n_replicas, n_points), float("nan"), dtype=torch.float64)
        return LiveCurves(metrics.share_memory_(), torch.zeros(n_replicas, dtype=torch.int64))

    def __post_init__(self) -> None:
        self.done.share_memory_()


def eval_epochs_for(epochs: int, eval_every: int) -> Tensor:
    """0, eval_every, 2 eval_every, ... and always the last epoch."""
    points = list(range(0, epochs + 1, eval_every))
    if points[-1] != epochs:
        points.append(epochs)
    return torch.tensor(points, dtype=torch.int64)


def _check(name: str, value, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"train_replicas: {name}={value!r} is not accepted; expected {accepted}.")


def _per_replica_lr(lr: float | Sequence[float], n: int) -> Tensor:
    """[n] float32 learning rates (the spec checked that each is finite and > 0)."""
    if isinstance(lr, (int, float)):
        return torch.full((n,), float(lr), dtype=torch.float32)
    _check("lr", list(lr), len(lr) == n, f"one value or {n} values (one per replica)")
    return torch.tensor([float(v) for v in lr], dtype=torch.float32)


def evaluate(
    model: mt.Module | mt.FusedMLPStep, loss_fn: mt.Loss, data: DiskData
) -> tuple[Tensor, Tensor]:
    """Per-replica loss and accuracy on a whole set; the predicted class is the larger logit."""
    out = model.forward(data.x)
    loss = loss_fn(out, data.targets)
    # Comparing the two logits is argmax for two classes (ties go to class 0, as argmax).
    pred = (out[..., 1] > out[..., 0]).long()
    acc = (pred == data.labels).double().mean(-1)
    return loss.double(), acc


def train_replicas(
    seeds: Sequence[int],
    spec: TrainSpec,
    *,
    progress: Callable[[int], None] | None = None,
    checkpoint: Checkpointing | None = None,
    live: LiveCurves | None = None,
) -> TrainResult:
    """Train one model per seed, all at once through the replica axis, as `spec` says.

    Replica r draws its data, initial weights and per-epoch shuffles from seed r alone, so it
    ends exactly as the same seed trained on its own. A replica whose training loss becomes
    non-finite is marked diverged and frozen; the others go on. The replicas are split over
    `spec.workers` processes (one thread each), or trained here on `spec.threads` threads;
    torch's thread count is as before when this returns. With `checkpoint`, each shard saves
    its state every `checkpoint.every` epochs and at the end, and resumes from a saved state of
    the same settings; `clear_checkpoints` removes them once the results are safe. With `live`
    (LiveCurves.create(len(seeds), n_points)), every evaluation is also written there as it
    happens, from whichever process trains the replica.
    """
    seeds = [int(s) for s in seeds]
    _check("seeds", seeds, len(seeds) > 0, "at least one seed")
    _check("spec", spec, isinstance(spec, TrainSpec), "a TrainSpec")
    _check(
        "checkpoint",
        checkpoint,
        checkpoint is None or isinstance(checkpoint, Checkpointing),
        "None or a Checkpointing(folder, every)",
    )
    shards = _shards(seeds, _per_replica_lr(spec.lr, len(seeds)), spec.workers)
    if checkpoint is not None and checkpoint.every > 0:
        _note_other_splits(checkpoint.folder, [s for s, _ in shards])
    _build_native(spec)
    if len(shards) == 1:
        return _train_shard(
            *shards[0], spec, threads=spec.threads, progress=progress, checkpoint=checkpoint,
            live=(live, 0),
        )  # fmt: skip
    return _train_sharded(shards, spec, progress, checkpoint, live)


def _shards(seeds: list[int], rates: Tensor, workers: int) -> list[tuple[list[int], Tensor]]:
    """Contiguous shards of the replicas, one per process (no more than there are replicas)."""
    workers = min(workers, len(seeds))
    bounds = [round(i * len(seeds) / workers) for i in range(workers + 1)]
    return [(seeds[a:b], rates[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _build_native(spec: TrainSpec) -> None:
    """Build the native kernel once, here, rather than in every worker at once; if it cannot
    be built, FusedMLPStep says so and falls back to torch's (or refuses, for "native")."""
    if spec.kernel == "torch":
        return
    with contextlib.suppress(mt.native.NativeUnavailable):
        sizes = (IN_FEATURES, *spec.hidden, OUT_FEATURES)
        mt.native.load(sizes, spec.activations, spec.loss, spec.tanh_grad)


def _train_sharded(
    shards: list[tuple[list[int], Tensor]],
    spec: TrainSpec,
    progress: Callable[[int], None] | None,
    checkpoint: Checkpointing | None,
    live: LiveCurves | None = None,
) -> TrainResult:
    """This process trains the first shard while forked workers train the others."""
    offsets = [sum(len(s) for s, _ in shards[:i]) for i in range(len(shards))]
    # fork: no re-import of the caller's modules; each child uses one thread (set in the shard)
    # and is killed by the kernel if this process dies (init_worker).
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(
        max_workers=len(shards) - 1,
        mp_context=ctx,
        initializer=init_worker,
        initargs=(os.getpid(),),
    )
    with pool:
        try:
            futures = [
                pool.submit(
                    _train_shard,
                    s,
                    r,
                    spec,
                    threads=1,
                    checkpoint=checkpoint,
                    live=(live, off),
                )  # fmt: skip
                for (s, r), off in zip(shards[1:], offsets[1:], strict=True)
            ]
            first = _train_shard(
                *shards[0], spec, threads=1, progress=progress, checkpoint=checkpoint,
                live=(live, 0),
            )  # fmt: skip
            parts = [first] + [f.result() for f in futures]
        except BaseException:
            # Failed, interrupted or told to stop (a signal handler raising): the other shards'
            # results are of no use, so stop them now rather than wait for them.
            kill_pool(pool)
            raise
    return TrainResult.concat(parts)


def _train_shard(
    seeds: list[int],
    rates: Tensor,
    spec: TrainSpec,
    *,
    threads: int,
    progress: Callable[[int], None] | None = None,
    checkpoint: Checkpointing | None = None,
    live: tuple[LiveCurves | None, int] = (None, 0),
) -> TrainResult:
    """One process's share of the replicas, on `threads` threads; torch's thread count is as
    before when it returns. `live`: where its evaluations are shared, and the index of its
    first replica there."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return _train_shard_body(seeds, rates, spec, threads, progress, checkpoint, live)
    finally:
        torch.set_num_threads(before)


@dataclass
class _Shard:
    """One process's replicas in training: model, data, kernel, and how far they got."""

    seeds: list[int]
    train: DiskData
    test: DiskData
    model: mt.Sequential
    loss_fn: mt.Loss
    opt: mt.SGD
    fused: mt.FusedMLPStep
    shufflers: list[torch.Generator]
    rates: Tensor  # [R] float32; 0 once a replica diverged
    points: Tensor  # [E] int64: the evaluation epochs
    metrics: Tensor  # [4, R, E] float64: train loss, test loss, train acc, test acc
    diverged: Tensor  # [R] bool
    diverged_epoch: Tensor  # [R] int64, -1 when not diverged
    epoch: int = 0  # epochs trained
    next_eval: int = 0  # index in points of the next evaluation
    resumed_from: int = 0  # epoch of the checkpoint this process started from
    timings: dict[str, float] = field(default_factory=dict)
    live: tuple[LiveCurves | None, int] = (None, 0)  # shared evaluations, first replica there


def _build_shard(seeds: list[int], rates: Tensor, s: TrainSpec, threads: int) -> _Shard:
    """Data, model, optimizer and kernel of a shard at epoch 0, all drawn from its seeds."""
    R = len(seeds)
    train, test = disk_replicas(seeds, s.n_train, s.n_test, s.encoding)
    model = mt.mlp(
        (IN_FEATURES, *s.hidden, OUT_FEATURES),
        s.activations,
        replicas=R,
        init=s.init,
        generator=[mt.seeded_generator(seed, "init") for seed in seeds],
        tanh_grad=s.tanh_grad,
    )
    loss_fn = mt.LOSSES[s.loss](replicas=R)
    opt = mt.SGD(model.params(), rates.clone())
    points = eval_epochs_for(s.epochs, s.eval_every)
    return _Shard(
        seeds=list(seeds),
        train=train,
        test=test,
        model=model,
        loss_fn=loss_fn,
        opt=opt,
        fused=mt.FusedMLPStep(model, loss_fn, opt, kernel=s.kernel, threads=threads),
        shufflers=[mt.seeded_generator(seed, "shuffle") for seed in seeds],
        rates=rates.clone(),
        points=points,
        metrics=torch.full((4, R, len(points)), float("nan"), dtype=torch.float64),
        diverged=torch.zeros(R, dtype=torch.bool),
        diverged_epoch=torch.full((R,), -1, dtype=torch.int64),
        timings={"data": 0.0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0},
    )


def _train_shard_body(
    seeds: list[int],
    rates: Tensor,
    s: TrainSpec,
    threads: int,
    progress: Callable[[int], None] | None,
    checkpoint: Checkpointing | None,
    live: tuple[LiveCurves | None, int] = (None, 0),
) -> TrainResult:
    t0 = time.perf_counter()
    shard = _build_shard(seeds, rates, s, threads)
    shard.live = live
    if shard.fused.native:
        # The kernel has the thread budget; the loop's small torch ops run on one thread, so
        # that no idle OpenMP thread spins beside the kernel's (_train_shard restores it).
        torch.set_num_threads(1)
    shard.timings["data"] = time.perf_counter() - t0
    saver = None
    if checkpoint is not None and checkpoint.every > 0:
        # The fingerprint holds the rates as given: the shard's own change when replicas diverge.
        saver = _ShardCheckpoint(checkpoint, seeds, _fingerprint(seeds, rates, s))
        saver.resume(shard)
        _share(shard, 0)
    if shard.next_eval == 0:
        _evaluate_next(shard)
    _train_epochs(shard, s, progress, saver)
    return _result_of(shard)


def _train_epochs(
    shard: _Shard,
    s: TrainSpec,
    progress: Callable[[int], None] | None,
    saver: _ShardCheckpoint | None,
) -> None:
    """Train from the shard's epoch to the last, evaluating and checkpointing on the way."""
    if shard.epoch >= s.epochs:
        return  # resumed from the final checkpoint: nothing left to do
    eval_at = shard.points.tolist()
    for epoch in range(shard.epoch + 1, s.epochs + 1):
        _train_epoch(shard, epoch, s.batch_size)
        if epoch == eval_at[shard.next_eval]:
            _evaluate_next(shard)
            if progress is not None:
                progress(epoch)
            if bool(shard.diverged.all()):
                break  # nothing left to train; later points stay NaN
        if saver is not None and epoch % saver.every == 0 and epoch < s.epochs:
            saver.save(shard)
    shard.epoch = s.epochs  # also after a break: a resumed shard must not train on
    if saver is not None:
        saver.save(shard)  # so that a job stopped before its results are written need not retrain


def _train_epoch(shard: _Shard, epoch: int, batch_size: int) -> None:
    """One epoch of SGD for every replica in its own shuffled order; freezes those that diverge."""
    t = time.perf_counter()
    x, targets = shard.train.x, shard.train.targets
    perm = torch.stack([torch.randperm(x.shape[1], generator=g) for g in shard.shufflers])
    # Each replica's rows in its own shuffled order, batch_size at a time (the last batch may be
    # smaller); the native kernel reads them through perm, without a copy.
    shard.fused.epoch(x, targets, batch_size, order=perm)
    # A non-finite loss makes the gradients, hence the parameters, non-finite at once; one scan
    # per epoch of every replica's parameters for inf/NaN finds it (in C with the native kernel:
    # the torch expression it replaces cost ~5% of a grid job's training).
    bad = shard.fused.nonfinite()
    if bool(bad.any()):
        params = [p for p, _ in shard.model.params()]
        new = bad & ~shard.diverged
        if bool(new.any()):
            shard.diverged |= new
            shard.diverged_epoch[new] = epoch
            # Frozen: rate 0 and NaN weights, so the replica stops changing visibly.
            shard.rates[new] = 0.0
            if bool((shard.rates > 0).any()):
                shard.opt.set_lr(shard.rates.clone())
            for p in params:
                p[new] = float("nan")
    shard.epoch = epoch
    shard.timings["train"] += time.perf_counter() - t


def _evaluate_next(shard: _Shard) -> None:
    """Loss and accuracy on both sets at the next evaluation point (NaN for diverged ones)."""
    t = time.perf_counter()
    k = shard.next_eval
    tr_loss, tr_acc = evaluate(shard.fused, shard.loss_fn, shard.train)
    te_loss, te_acc = evaluate(shard.fused, shard.loss_fn, shard.test)
    shard.metrics[:, :, k] = torch.stack([tr_loss, te_loss, tr_acc, te_acc])
    if shard.diverged.any():
        shard.metrics[:, shard.diverged, k] = float("nan")
    shard.next_eval = k + 1
    _share(shard, k)
    shard.timings["eval"] += time.perf_counter() - t


def _share(shard: _Shard, first: int) -> None:
    """Copy the evaluation points from index `first` on to the shared LiveCurves, if any."""
    live, offset = shard.live
    if live is None or shard.next_eval <= first:
        return
    rows = slice(offset, offset + len(shard.seeds))
    live.metrics[:, rows, first : shard.next_eval] = shard.metrics[:, :, first : shard.next_eval]
    live.done[rows] = shard.next_eval


def _result_of(shard: _Shard) -> TrainResult:
    m = shard.metrics
    return TrainResult(
        seeds=list(shard.seeds),
        eval_epochs=shard.points,
        train_loss=m[0],
        test_loss=m[1],
        train_acc=m[2],
        test_acc=m[3],
        diverged=shard.diverged,
        diverged_epoch=shard.diverged_epoch,
        state={name: p.clone() for name, p in shard.model.named_params()},
        timings=shard.timings,
        resumed_from=torch.full((len(shard.seeds),), shard.resumed_from, dtype=torch.int64),
        kernel="native" if shard.fused.native else "torch",
    )


# --- checkpoints ---------------------------------------------------------------------------


def _fingerprint(seeds: list[int], rates: Tensor, s: TrainSpec) -> dict[str, Any]:
    """Everything a shard's results depend on; a checkpoint resumes only under the same one."""
    values = {k: getattr(s, k) for k in FINGERPRINT_FIELDS}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return {"format": CHECKPOINT_FORMAT, "seeds": list(seeds), "lr": rates.tolist(), **settings}


def fingerprint(seeds: Sequence[int], spec: TrainSpec) -> dict[str, Any]:
    """What training these seeds as `spec` says depends on (checkpoints and trained results
    are used only under the same one)."""
    seeds = [int(s) for s in seeds]
    return _fingerprint(seeds, _per_replica_lr(spec.lr, len(seeds)), spec)


def save_trained(folder: Path, result: TrainResult, fingerprint: dict[str, Any]) -> None:
    """A job's results trained by another job (experiments/lr_groups.py), into the job's
    checkpoint folder (atomically) until it records them; `clear_checkpoints` removes them."""
    buf = io.BytesIO()
    torch.save({"fingerprint": fingerprint, "result": vars(result)}, buf)
    _write_atomic(Path(folder) / TRAINED_FILE, buf.getbuffer())


def load_trained(folder: Path, fingerprint: dict[str, Any]) -> TrainResult | None:
    """The results `save_trained` left in `folder` for these settings, else None (none there,
    unreadable, or saved under other settings: then the job trains, as without them)."""
    path = Path(folder) / TRAINED_FILE
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        result = TrainResult(**saved["result"])
    except Exception as exc:  # whatever cannot be read is trained again
        log.warning("trained results %s cannot be read (%s); training instead.", path, exc)
        return None
    if saved["fingerprint"] != fingerprint:
        log.warning("trained results %s are of other settings; training instead.", path)
        return None
    return result


def _checkpoint_name(seeds: list[int]) -> str:
    return f"shard-{seeds[0]}-{len(seeds)}.pt"


def _note_other_splits(folder: Path, shard_seeds: list[list[int]]) -> None:
    """Say so when the folder holds checkpoints of another split of the replicas (another
    number of workers): they are not resumed."""
    if not folder.is_dir():
        return
    ours = {_checkpoint_name(seeds) for seeds in shard_seeds}
    others = sorted(p.name for p in folder.glob("shard-*.pt") if p.name not in ours)
    if others:
        log.warning(
            "checkpoints %s in %s split the replicas otherwise (another number of workers?) and "
            "are not resumed; this job's shards save to %s.",
            ", ".join(others), folder, ", ".join(sorted(ours)),
        )  # fmt: skip


class _ShardCheckpoint:
    """One shard's checkpoint file: written atomically, resumed only under the same settings."""

    def __init__(self, checkpoint: Checkpointing, seeds: list[int], fingerprint: dict) -> None:
        self.path = checkpoint.folder / _checkpoint_name(seeds)
        self.every = checkpoint.every
        self.fingerprint = fingerprint
        self.label = f"seeds {seeds[0]}..{seeds[-1]}"
        self.failed = False

    def resume(self, shard: _Shard) -> None:
        """Load the saved state into a fresh shard if there is one of the same settings."""
        t = time.perf_counter()
        state = self._read()
        if state is not None:
            _load_state(shard, state)
            log.info(
                "%s: resuming from epoch %d of %d (checkpoint %s)",
                self.label, shard.epoch, self.fingerprint["epochs"], self.path,
            )  # fmt: skip
        shard.timings["checkpoint"] += time.perf_counter() - t

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
            saved = state["fingerprint"]
        except Exception as exc:  # whatever cannot be read is not resumed
            log.warning(
                "%s: checkpoint %s cannot be read (%s); not resumed, training from epoch 0.",
                self.label, self.path, exc,
            )  # fmt: skip
            return None
        if saved != self.fingerprint:
            keys = sorted(
                k for k in {*saved, *self.fingerprint} if saved.get(k) != self.fingerprint.get(k)
            )
            log.warning(
                "%s: checkpoint %s was saved with other settings (%s differ); not resumed, "
                "training from epoch 0 (the file is replaced at the next checkpoint).",
                self.label, self.path, ", ".join(keys),
            )  # fmt: skip
            return None
        return state

    def save(self, shard: _Shard) -> None:
        """Write the shard's state; a failure (disk full) is logged once and training goes on."""
        t = time.perf_counter()
        buf = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, **_state_of(shard)}, buf)
        try:
            _write_atomic(self.path, buf.getbuffer())
        except OSError as exc:
            if not self.failed:
                log.warning(
                    "%s: cannot write checkpoint %s (%s); training goes on without it.",
                    self.label, self.path, exc,
                )  # fmt: skip
            self.failed = True
        shard.timings["checkpoint"] += time.perf_counter() - t


def _state_of(shard: _Shard) -> dict[str, Any]:
    """What training changes: with the settings, it determines the rest of the run."""
    k = shard.next_eval
    return {
        "epoch": shard.epoch,
        "next_eval": k,
        # Copies: torch.save writes a view's whole storage.
        "params": {name: p.clone() for name, p in shard.model.named_params()},
        "rates": shard.rates.clone(),
        "diverged": shard.diverged.clone(),
        "diverged_epoch": shard.diverged_epoch.clone(),
        "shuffle": torch.stack([g.get_state() for g in shard.shufflers]),
        "metrics": shard.metrics[:, :, :k].clone(),
    }


def _load_state(shard: _Shard, state: dict[str, Any]) -> None:
    """Put a saved state into a freshly built shard of the same settings."""
    params = dict(shard.model.named_params())
    for name, value in state["params"].items():
        params[name].copy_(value)
    shard.rates.copy_(state["rates"])
    if bool((shard.rates > 0).any()):
        shard.opt.set_lr(shard.rates.clone())
    shard.diverged.copy_(state["diverged"])
    shard.diverged_epoch.copy_(state["diverged_epoch"])
    for g, g_state in zip(shard.shufflers, state["shuffle"], strict=True):
        g.set_state(g_state.clone())
    k = state["next_eval"]
    shard.metrics[:, :, :k] = state["metrics"]
    shard.next_eval = k
    shard.epoch = shard.resumed_from = state["epoch"]


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write through a temporary file in the same folder, fsync'ed and renamed over `path`: a
    reader finds the old file or the new one, never a part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is in the folder's metadata: make it durable too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def clear_checkpoints(folder: Path | str) -> int:
    """Remove the shard checkpoints, trained results (save_trained) and leftover temporary
    files in `folder`, and the folder if that leaves it empty; returns how many files were
    removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    patterns = ("shard-*.pt", f".shard-*.pt.*{_TMP_SUFFIX}", TRAINED_FILE,
                f".{TRAINED_FILE}.*{_TMP_SUFFIX}")  # fmt: skip
    for f in [path for pattern in patterns for path in folder.glob(pattern)]:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            removed += 1
    with contextlib.suppress(OSError):
        folder.rmdir()
    return removed
