"""experiments/compose.py: a job's config derived from another job's is the config Hydra composes
for it, hydra node included (what the lr_groups launcher runs the job with), or None."""

from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import setup_globals
from hydra.types import HydraContext
from omegaconf import OmegaConf, open_dict

from experiments import compose
from experiments.callbacks import _job_overrides
from experiments.hydra_plugin.lr_groups_launcher import group_configs, job_config
from experiments.lr_groups import group_jobs
from tests.experiments.conftest import CONF


def _master(task: list[str], hydra: list[str] = ()):
    """The multirun's config as the launcher gets it (composed with its first override, the
    preset; the sweeps are Hydra's overrides)."""
    cfg = hydra_compose("config", overrides=[*hydra, task[0]], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = task
        cfg.hydra.overrides.hydra = list(hydra)
    return cfg


def _as_text(cfg) -> str:
    return OmegaConf.to_yaml(cfg)  # unresolved: interpolations compared as written


@pytest.mark.parametrize(
    ("task", "hydra", "groups"),
    [
        (["experiment=grid", "trainer.batch_size=10,100"], [], 10),
        # the dirname excludes a key, lr spelled as Hydra may get it, a swept list value
        (["experiment=quick", "optim.lr=1e-3,0.5,2", "model.activations=[tanh,relu,tanh]",
          "replicas=3"], ["hydra.job.config.override_dirname.exclude_keys=[replicas]"], 1),
    ],
)  # fmt: skip
def test_a_groups_derived_configs_are_those_hydra_composes(task, hydra, groups):
    setup_globals()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        master = _master(task, hydra)
        jobs = _job_overrides(master)
        loader = GlobalHydra.instance().config_loader()
        context = HydraContext(config_loader=loader, callbacks=None)
        found = group_jobs(jobs)
        assert len(found) == groups
        for group in found[:2]:
            numbered = [(i, jobs[i]) for i in group]
            derived = group_configs(context, master, numbered)
            for (i, overrides), cfg in zip(numbered, derived, strict=True):
                composed = job_config(context, master, i, overrides)
                assert _as_text(cfg) == _as_text(composed), overrides
                assert OmegaConf.is_struct(cfg) and not OmegaConf.is_readonly(cfg.hydra)
            assert len({c.optim.lr for c in derived}) == len(group)
            assert len({c.hydra.job.override_dirname for c in derived}) == len(group)


def test_what_cannot_be_derived_is_left_to_hydra():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        base_overrides = ["optim.lr=0.1", "replicas=2"]
        base = hydra_compose("config", overrides=base_overrides, return_hydra_config=True)
        derived = compose.derived(base, base_overrides, ["optim.lr=0.2", "replicas=2"])
        assert derived.optim.lr == 0.2 and base.optim.lr == 0.1
        assert list(derived.hydra.overrides.task) == ["optim.lr=0.2", "replicas=2"]
        for overrides in (
            ["optim.lr=0.2"],  # fewer overrides
            ["+optim.lr=0.2", "replicas=2"],  # not a plain value
            ["optim=sgd", "replicas=2"],  # a config group
            ["optim.lr=0.1", "model.nonexistent=2"],  # another key, one the config lacks
        ):
            assert compose.derived(base, base_overrides, overrides) is None, overrides
        overlapping = ["optim.lr=0.1", "optim.lr=0.3"]  # the order of the two would matter
        assert compose.derived(base, overlapping, ["optim.lr=0.2", "optim.lr=0.3"]) is None
        with pytest.raises(compose.NotApplied, match="optim.lr=fast") as refused:
            compose.derived(base, base_overrides, ["optim.lr=fast", "replicas=2"])
        assert "fast" in str(refused.value.__cause__)
