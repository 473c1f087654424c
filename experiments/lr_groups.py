"""A sweep's learning rates trained together: jobs that differ only in `optim.lr` are one batch.

The replica axis takes one learning rate per replica, so what can share a batch shares it
(DESIGN: only what cannot, batch size and activations, needs jobs of its own). The grid's 5
jobs of 10 seeds that differ only in their rate are one training of 50 replicas (1-7% less
training time than 5 of 10, most at small batches; benchmarks/README.md). Each job still has
its own job run, replica runs, bundle and config hash, with the numbers it would have had alone
(replica r of a batch ends exactly as the same seed trained alone, learning rate included).

How: `hydra/launcher=lr_groups` (experiments/hydra_plugin) runs a group's jobs one after the
other in one worker, inside `together(...)`. The first of them that trains (the leader) takes
along the others that are not FINISHED in the store and have no checkpoint of their own
(experiments/job.py). Right after training, each one's results are written to its checkpoint
folder (training.save_trained: atomic, with the fingerprint of its settings), so nothing
trained lives only in memory; at its own turn, a job finds them there instead of training, and
records them as usual. A leader stopped half-way resumes from its group's checkpoint when the
sweep is run again; if the leader fails, the next job of the group trains (and leads) instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

KEY = "optim.lr"  # what a group's jobs may differ in: TrainSpec takes one rate per replica


@dataclass(frozen=True)
class Member:
    """One job of the group being run: its Hydra job number and its task config."""

    num: int
    cfg: DictConfig


_group: list[Member] = []


def group_jobs(job_overrides: Sequence[Sequence[str]]) -> list[list[int]]:
    """The jobs' indices, grouped when their overrides are equal but for `optim.lr`; groups in
    the order of their first job, jobs in theirs."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        rest = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != KEY)
        groups.setdefault(rest, []).append(i)
    return list(groups.values())


@contextmanager
def together(jobs: Sequence[tuple[int, DictConfig]]) -> Iterator[None]:
    """While the block runs, `members()` are these jobs (number, composed config with or
    without its hydra node): the jobs a job of this process may train with it."""
    _group[:] = [Member(num, _task_config(cfg)) for num, cfg in jobs]
    try:
        yield
    finally:
        _group.clear()


def members() -> list[Member]:
    """The group being run in this process (empty outside `together`)."""
    return list(_group)


def _task_config(cfg: DictConfig) -> DictConfig:
    """The config as the task function gets it: without the hydra node (callbacks._task)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
