"""Replica-batched training of the test model: plain values in, tensors of metrics out.

No Hydra and no MLflow here, so the loop can be tested and benchmarked alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

import minitorch as mt
from experiments.data import ENCODINGS, DiskData, disk_replicas

IN_FEATURES = 2
OUT_FEATURES = 2


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
    timings: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence[TrainResult]) -> TrainResult:
        """Join results of disjoint replica shards along the replica axis, in order."""
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
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
        )


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
    if isinstance(lr, (int, float)):
        rates = [float(lr)] * n
    else:
        rates = [float(v) for v in lr]
        _check("lr", list(lr), len(rates) == n, f"one value or {n} values (one per replica)")
    _check(
        "lr", lr, all(r > 0 and r == r and r != float("inf") for r in rates), "finite values > 0"
    )
    return torch.tensor(rates, dtype=torch.float32)


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
    *,
    hidden: Sequence[int] = (25, 25, 25),
    activations: Sequence[str] = ("tanh", "tanh", "tanh"),
    init: str = "torch",
    loss: str = "mse",
    lr: float | Sequence[float] = 0.01,
    batch_size: int = 25,
    epochs: int = 4000,
    eval_every: int = 10,
    n_train: int = 1000,
    n_test: int = 1000,
    encoding: str = "onehot",
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one model per seed, all at once through the replica axis.

    Replica r draws its data, initial weights and per-epoch shuffles from seed r alone, so it
    ends exactly as the same seed trained on its own. A replica whose training loss becomes
    non-finite is marked diverged and frozen; the others go on.
    """
    seeds = [int(s) for s in seeds]
    _check("seeds", seeds, len(seeds) > 0, "at least one seed")
    _check("hidden", list(hidden), len(hidden) > 0 and all(h > 0 for h in hidden), "sizes > 0")
    _check(
        "activations",
        list(activations),
        len(activations) == len(hidden),
        f"one activation per hidden layer ({len(hidden)})",
    )
    _check(
        "activations",
        list(activations),
        all(a in mt.ACTIVATIONS for a in activations),
        f"names among {', '.join(mt.ACTIVATIONS)}",
    )
    _check("init", init, init in mt.INIT_SCHEMES, f"one of {', '.join(mt.INIT_SCHEMES)}")
    _check("loss", loss, loss in mt.LOSSES, f"one of {', '.join(mt.LOSSES)}")
    _check("n_train", n_train, n_train > 0, "an integer > 0")
    _check("n_test", n_test, n_test > 0, "an integer > 0")
    _check("batch_size", batch_size, 0 < batch_size <= n_train, f"an integer in [1, {n_train}]")
    _check("epochs", epochs, epochs > 0, "an integer > 0")
    _check("eval_every", eval_every, eval_every > 0, "an integer > 0")
    _check("encoding", encoding, encoding in ENCODINGS, f"one of {', '.join(ENCODINGS)}")
    _check("workers", workers, workers >= 1, "an integer >= 1")
    rates = _per_replica_lr(lr, len(seeds))
    kwargs = dict(
        hidden=tuple(hidden),
        activations=tuple(activations),
        init=init,
        loss=loss,
        batch_size=batch_size,
        epochs=epochs,
        eval_every=eval_every,
        n_train=n_train,
        n_test=n_test,
        encoding=encoding,
    )
    workers = min(workers, len(seeds))
    # Build the native kernel once, here, rather than in every worker at once; if it cannot
    # be built, FusedMLPStep says so and falls back to the torch kernels.
    with contextlib.suppress(mt.native.NativeUnavailable):
        mt.native.load((IN_FEATURES, *hidden, OUT_FEATURES), tuple(activations), loss)
    if workers == 1:
        return _train_shard(seeds, rates, progress=progress, **kwargs)
    # Contiguous shards; this process trains the first while the others train the rest.
    bounds = [round(i * len(seeds) / workers) for i in range(workers + 1)]
    shards = [(seeds[a:b], rates[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    # fork: no re-import of the caller's modules; each child uses one thread (set in the shard).
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx) as pool:
        futures = [pool.submit(_train_shard, s, r, threads=1, **kwargs) for s, r in shards[1:]]
        first = _train_shard(*shards[0], threads=1, progress=progress, **kwargs)
        parts = [first] + [f.result() for f in futures]
    return TrainResult.concat(parts)


def _train_shard(
    seeds: list[int], rates: Tensor, *, threads: int | None = None, **settings
) -> TrainResult:
    """One process's share of the replicas, under its thread budget (`threads`, or torch's
    current count); torch's thread count is as before when it returns."""
    before = torch.get_num_threads()
    budget = threads if threads is not None else before
    try:
        torch.set_num_threads(budget)
        # The fused step's backward products may run in numpy's OpenBLAS: give it torch's
        # thread budget, or it would start one thread per core in every worker and launcher job.
        with threadpool_limits(limits=budget, user_api="blas"):
            return _train_shard_body(seeds, rates, threads=budget, **settings)
    finally:
        torch.set_num_threads(before)


def _train_shard_body(
    seeds: list[int],
    rates: Tensor,
    *,
    hidden: tuple[int, ...],
    activations: tuple[str, ...],
    init: str,
    loss: str,
    batch_size: int,
    epochs: int,
    eval_every: int,
    n_train: int,
    n_test: int,
    encoding: str,
    threads: int,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    R = len(seeds)
    t0 = time.perf_counter()
    train, test = disk_replicas(seeds, n_train, n_test, encoding)
    sizes = (IN_FEATURES, *hidden, OUT_FEATURES)
    model = mt.mlp(
        sizes,
        activations,
        replicas=R,
        init=init,
        generator=[mt.seeded_generator(s, "init") for s in seeds],
    )
    loss_fn = mt.LOSSES[loss](replicas=R)
    opt = mt.SGD(model.params(), rates.clone())
    fused = mt.FusedMLPStep(model, loss_fn, opt, threads=threads)
    if fused.native:
        # The kernel has the thread budget; the loop's small torch ops run on one thread, so
        # that no idle OpenMP thread spins beside the kernel's (_train_shard restores it).
        torch.set_num_threads(1)
    shufflers = [mt.seeded_generator(s, "shuffle") for s in seeds]
    points = eval_epochs_for(epochs, eval_every)
    E = len(points)
    metrics = torch.full((4, R, E), float("nan"), dtype=torch.float64)
    diverged = torch.zeros(R, dtype=torch.bool)
    diverged_epoch = torch.full((R,), -1, dtype=torch.int64)
    timings = {"data": time.perf_counter() - t0, "train": 0.0, "eval": 0.0}

    params = [p for p, _ in model.params()]

    def record(k: int) -> None:
        t = time.perf_counter()
        tr_loss, tr_acc = evaluate(fused, loss_fn, train)
        te_loss, te_acc = evaluate(fused, loss_fn, test)
        metrics[:, :, k] = torch.stack([tr_loss, te_loss, tr_acc, te_acc])
        if diverged.any():
            metrics[:, diverged, k] = float("nan")
        timings["eval"] += time.perf_counter() - t

    record(0)
    k = 1
    eval_at = points.tolist()
    t_train = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n_train, generator=g) for g in shufflers])
        # Each replica's rows in its own shuffled order, batch_size at a time (the last batch
        # may be smaller); the native kernel reads them through perm, without a copy.
        fused.epoch(train.x, train.targets, batch_size, order=perm)
        # A non-finite loss makes the gradients, hence the parameters, non-finite at once; one
        # check per epoch on per-replica parameter sums (which propagate inf/nan) finds it. (A
        # sum can also overflow for weights near 1e37: such a replica is diverging anyway.)
        bad = ~torch.isfinite(torch.stack([p.flatten(1).sum(1) for p in params]).sum(0))
        if bool(bad.any()):
            new = bad & ~diverged
            if bool(new.any()):
                diverged |= new
                diverged_epoch[new] = epoch
                # Frozen: rate 0 and NaN weights, so the replica stops changing visibly.
                rates[new] = 0.0
                if bool((rates > 0).any()):
                    opt.set_lr(rates.clone())
                for p, _ in model.params():
                    p[new] = float("nan")
        if epoch == eval_at[k]:
            timings["train"] += time.perf_counter() - t_train
            record(k)
            k += 1
            if progress is not None:
                progress(epoch)
            t_train = time.perf_counter()
            if bool(diverged.all()):
                break  # nothing left to train; later points stay NaN
    state = {name: p.clone() for name, p in model.named_params()}
    return TrainResult(
        seeds=list(seeds),
        eval_epochs=points,
        train_loss=metrics[0],
        test_loss=metrics[1],
        train_acc=metrics[2],
        test_acc=metrics[3],
        diverged=diverged,
        diverged_epoch=diverged_epoch,
        state=state,
        timings=timings,
    )
