"""`hydra/launcher=lr_groups`: joblib, with each configuration's learning rates trained together.

Jobs that differ only in `optim.lr` form a group (experiments/lr_groups.py); a group goes to
one joblib worker, which runs its jobs one after the other through Hydra's own `run_job`
(each keeps its output dir, .hydra/ files, callbacks and JobReturn). The first of them to
train trains the group's replicas as one batch, one learning rate per replica; the others find
their results on disk. The settings are joblib's (hydra/launcher=joblib); `n_jobs` counts
workers, each running one group at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import compose, lr_groups

log = logging.getLogger(__name__)


@dataclass
class LrGroupsLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.minitorch_lab.lr_groups_launcher.LrGroupsLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="lr_groups", node=LrGroupsLauncherConf, provider="minitorch_lab"
)


class LrGroupsLauncher(JoblibLauncher):
    """Joblib's launcher, one task per group of jobs that differ only in optim.lr."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        # joblib only when launching (~0.15 s of imports): the app imports this module to
        # register the launcher, also for a single run or a refused config.
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        from joblib import Parallel, delayed

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib)
        joblib_cfg["backend"] = "loky"  # as hydra/launcher=joblib: threads do not suit Hydra
        process_joblib_cfg(joblib_cfg)
        groups = lr_groups.group_jobs(job_overrides)
        self._log_plan(joblib_cfg, groups, job_overrides, initial_job_idx)
        state = Singleton.get_state()
        returns = Parallel(**joblib_cfg)(
            delayed(execute_group)(
                [(initial_job_idx + i, list(job_overrides[i])) for i in group],
                self.hydra_context,
                self.config,
                self.task_function,
                state,
            )
            for group in groups
        )
        by_index = {i: ret for group, rets in zip(groups, returns, strict=True)
                    for i, ret in zip(group, rets, strict=True)}  # fmt: skip
        return [by_index[i] for i in range(len(job_overrides))]

    def _log_plan(
        self, joblib_cfg: dict, groups: list[list[int]], job_overrides: Sequence, first: int
    ) -> None:
        settings = ",".join(f"{k}={v}" for k, v in joblib_cfg.items())
        log.info(
            "Joblib.Parallel(%s) is launching %d jobs in %d groups (the learning rates of each "
            "configuration train together); sweep output dir: %s",
            settings, len(job_overrides), len(groups), self.config.hydra.sweep.dir,
        )  # fmt: skip
        for g, group in enumerate(groups):
            for i in group:
                overrides = " ".join(filter_overrides(job_overrides[i]))
                log.info("\t#%d (group %d): %s", first + i, g, overrides)


def execute_group(
    jobs: list[tuple[int, list[str]]],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> list[JobReturn]:
    """In a worker: a group's jobs, one after the other, inside `lr_groups.together`."""
    setup_globals()
    Singleton.set_state(singleton_state)
    configs = group_configs(hydra_context, config, jobs)
    returns = []
    with lr_groups.together([(idx, cfg) for (idx, _), cfg in zip(jobs, configs, strict=True)]):
        for sweep_config in configs:
            HydraConfig.instance().set_config(sweep_config)
            returns.append(
                run_job(
                    hydra_context=hydra_context,
                    config=sweep_config,
                    task_function=task_function,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
    return returns


def group_configs(
    hydra_context: HydraContext, config: DictConfig, jobs: list[tuple[int, list[str]]]
) -> list[DictConfig]:
    """The group's configs as Hydra composes them: the first composed, the others derived from
    it (experiments/compose.py: they differ in `optim.lr=<value>`): a grid group's 5 configs
    in ~115 ms instead of ~435 ms."""
    (first_idx, first_overrides), rest = jobs[0], jobs[1:]
    first = job_config(hydra_context, config, first_idx, first_overrides)
    configs = [first]
    for idx, overrides in rest:
        try:
            cfg = compose.derived(first, first_overrides, overrides)
        except compose.NotApplied:  # Hydra composing it says why
            cfg = None
        if cfg is None:
            configs.append(job_config(hydra_context, config, idx, overrides))
            continue
        OmegaConf.copy_cache(from_config=config, to_config=cfg)  # as load_sweep_config does
        _number(cfg, idx)
        configs.append(cfg)
    return configs


def job_config(
    hydra_context: HydraContext, config: DictConfig, idx: int, overrides: list[str]
) -> DictConfig:
    """A job's composed config, as hydra/launcher=joblib composes it."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, overrides)
    _number(sweep_config, idx)
    return sweep_config


def _number(sweep_config: DictConfig, idx: int) -> None:
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
