"""Configs compose; a bad value is refused with a message naming key, value and what is accepted."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from experiments.callbacks import _job_overrides
from experiments.config import ConfigError, config_hash, flatten, spec_values, validate
from experiments.spec import TrainSpec
from tests.experiments.conftest import CONF, compose_cfg

PRESETS = ["report", "report_faithful", "grid", "grid_full", "quick"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    cfg = compose_cfg(f"experiment={preset}")
    validate(cfg)
    assert cfg.tracking.experiment == {"grid_full": "grid"}.get(preset, preset)
    assert len(cfg.model.activations) == len(cfg.model.hidden) == 3


def test_accepted_names_are_minitorchs():
    import sys

    import minitorch as mt
    from experiments import config
    from experiments.data import ENCODINGS

    # FusedMLPStep's own list, wherever it lives; its "numpy" kernel is not offered (it goes).
    fused_kernels = sys.modules[mt.FusedMLPStep.__module__].KERNELS
    assert set(config.KERNELS) == set(fused_kernels) - {"numpy"}
    assert set(config.ACTIVATIONS) == set(mt.ACTIVATIONS)
    assert set(config.INIT_SCHEMES) == set(mt.INIT_SCHEMES)
    assert set(config.LOSSES) == set(mt.LOSSES)
    assert set(config.TANH_GRADS) == set(mt.TANH_GRADS)
    assert set(config.ENCODINGS) == set(ENCODINGS)


def test_default_config_validates():
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.replicas == 1 and cfg.trainer.threads == 1 and cfg.tracking.uri is None


def test_validate_returns_the_jobs_train_spec():
    cfg = compose_cfg("experiment=quick", "trainer.kernel=torch", "model.act2=relu")
    spec = validate(cfg)
    assert spec == TrainSpec(activations=("tanh", "relu", "tanh"), n_train=200, n_test=200,
                             epochs=20, eval_every=5, kernel="torch")  # fmt: skip
    assert spec_values(cfg)["hidden"] == (25, 25, 25)


# The flattened default config, and each preset as the keys it changes: what the presets
# composed to before they were cut down to their differences (issue 13), and their hashes.
DEFAULT_FLAT = {
    "data.encoding": "onehot", "data.n_test": "1000", "data.n_train": "1000", "data.name": "disk",
    "model.activations": "[tanh,tanh,tanh]", "model.hidden": "[25,25,25]", "model.init": "torch",
    "model.loss": "mse", "model.tanh_grad": "exact", "optim.lr": "0.01", "optim.name": "sgd",
    "replicas": "1", "seed": "0", "tracking.experiment": "minitorch", "tracking.figure_dpi": "80",
    "tracking.live_every_s": "5.0", "tracking.replica_figures": "True",
    "tracking.replica_weights": "True", "tracking.rerun": "False", "tracking.retry_s": "60.0",
    "tracking.history_points": "51", "tracking.history_tolerance": "0.01",
    "tracking.server_timeout_s": "5.0",
    "tracking.uri": "None", "trainer.batch_size": "25",
    "trainer.checkpoint_dir": str(CONF.parent / "runs" / "checkpoints"),
    "trainer.checkpoint_every": "500", "trainer.epochs": "4000", "trainer.eval_every": "10",
    "trainer.kernel": "auto", "trainer.progress": "True", "trainer.threads": "1",
    "trainer.workers": "1",
}  # fmt: skip
GRID = {"replicas": "10", "tracking.experiment": "grid", "tracking.replica_figures": "False",
        "trainer.epochs": "2000", "trainer.eval_every": "50"}  # fmt: skip
PRESET_CHANGES = {
    None: ("2ff3211928bb", {}),
    "report": ("2ff3211928bb",
               {"replicas": "110", "tracking.experiment": "report", "trainer.workers": "2"}),
    "report_faithful": ("2fffd67bbab1",
                        {"model.tanh_grad": "report", "replicas": "110",
                         "tracking.experiment": "report_faithful", "trainer.workers": "2"}),
    "grid": ("b26a1022d0dc", GRID),
    "grid_full": ("b26a1022d0dc", GRID),
    "quick": ("0482adf2f137",
              {"data.n_test": "200", "data.n_train": "200", "replicas": "3",
               "tracking.experiment": "quick", "trainer.epochs": "20", "trainer.eval_every": "5"}),
}  # fmt: skip


@pytest.mark.parametrize("preset", list(PRESET_CHANGES), ids=str)
def test_each_preset_composes_to_the_defaults_and_its_changes(preset):
    cfg = compose_cfg(*([f"experiment={preset}"] if preset else []))
    want_hash, changes = PRESET_CHANGES[preset]
    assert flatten(cfg) == {**DEFAULT_FLAT, **changes}
    assert config_hash(cfg) == want_hash


def test_the_grid_presets_sweep_what_they_did():
    grid = compose_cfg("experiment=grid", hydra_node=True).hydra.sweeper.params
    full = compose_cfg("experiment=grid_full", hydra_node=True).hydra.sweeper.params
    assert dict(grid) == {
        "trainer.batch_size": "10,25,50,100",
        "optim.lr": "0.001,0.003,0.01,0.03,0.1",
        "model.activations": "[tanh,tanh,tanh],[relu,relu,relu],[sigmoid,sigmoid,sigmoid],"
        "[relu,tanh,tanh],[tanh,tanh,relu]",
    }
    acts = {f"model.act{i}": "tanh,relu,sigmoid" for i in (1, 2, 3)}
    per_layer = "[${model.act1},${model.act2},${model.act3}]"  # each job resolves it
    assert dict(full) == {**grid, "model.activations": per_layer, **acts}


def test_report_preset_is_the_reports_final_model():
    cfg = compose_cfg("experiment=report")
    assert list(cfg.model.activations) == ["tanh", "tanh", "tanh"]
    assert list(cfg.model.hidden) == [25, 25, 25]
    assert (cfg.optim.lr, cfg.trainer.batch_size, cfg.trainer.epochs) == (0.01, 25, 4000)
    assert (cfg.replicas, cfg.seed, cfg.trainer.eval_every) == (110, 0, 10)
    assert cfg.model.loss == "mse" and cfg.data.n_train == cfg.data.n_test == 1000


def test_quick_preset_is_small():
    cfg = compose_cfg("experiment=quick")
    assert cfg.replicas == 3 and cfg.trainer.epochs <= 50 and cfg.data.n_train <= 200


@pytest.mark.parametrize(("preset", "n_jobs"), [("grid", 100), ("grid_full", 540)])
def test_grid_presets_expand_to_their_stated_size(preset, n_jobs):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        jobs = _job_overrides(cfg)
        assert len(jobs) == n_jobs
        # The last job of each grid, composed as its launcher will: the activations arrive.
        loader = GlobalHydra.instance().config_loader()
        last = loader.load_sweep_config(cfg, jobs[-1])
        assert last.trainer.batch_size == 100 and last.optim.lr == 0.1
        want = ["tanh", "tanh", "relu"] if preset == "grid" else ["sigmoid"] * 3
        assert list(last.model.activations) == want


def test_slurm_launcher_preset_composes():
    cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.partition=cpu", hydra_node=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task) == ("cpu", 60, 1)


def test_per_layer_activation_overrides_fill_the_list():
    cfg = compose_cfg("model.act1=relu", "model.act3=sigmoid")
    assert list(cfg.model.activations) == ["relu", "tanh", "sigmoid"]
    assert flatten(cfg)["model.activations"] == "[relu,tanh,sigmoid]"  # as an override writes it
    assert "model.act1" not in flatten(cfg)


def test_flatten_and_hash():
    cfg = compose_cfg("experiment=quick")
    flat = flatten(cfg)
    assert flat["model.hidden"] == "[25,25,25]" and flat["optim.lr"] == "0.01"
    # the hash reads lists as format 1 spelled them, so hashes did not change with format 2
    assert flatten(cfg, brackets=False)["model.hidden"] == "25,25,25"
    assert flat["seed"] == "0" and flat["replicas"] == "3"
    # Seed, replicas, threads, the kernel and tracking do not change the hash; the model does.
    same = compose_cfg(
        "experiment=quick", "seed=5", "replicas=9", "trainer.threads=2", "trainer.kernel=torch",
        "tracking.experiment=x",
    )  # fmt: skip
    other = compose_cfg("experiment=quick", "optim.lr=0.02")
    assert config_hash(cfg) == config_hash(same) != config_hash(other)
    assert len(config_hash(cfg)) == 12


BAD = [
    ("optim.lr=0", "optim.lr=0.0", "> 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1", "> 0"),
    ("trainer.batch_size=0", "trainer.batch_size=0", "from 1 to data.n_train=1000"),
    ("trainer.batch_size=1001", "trainer.batch_size=1001", "from 1 to data.n_train=1000"),
    ("trainer.epochs=0", "trainer.epochs=0", "> 0"),
    ("trainer.eval_every=-1", "trainer.eval_every=-1", "> 0"),
    ("replicas=0", "replicas=0", ">= 1"),
    ("model.act2=softmax", "model.act2='softmax'", "relu, tanh, sigmoid"),
    (
        "model.activations=[tanh,gelu,tanh]",
        "model.activations=['tanh', 'gelu', 'tanh']",
        "relu, tanh, sigmoid",
    ),
    ("model.init=kaiming", "model.init='kaiming'", "torch, xavier, normal"),
    (
        "model.activations=[tanh,tanh]",
        "has 2 entries but model.hidden=[25, 25, 25] has 3",
        "one activation per hidden layer",
    ),
    ("data.encoding=binary", "data.encoding='binary'", "onehot, pm1"),
    ("trainer.kernel=numpy", "trainer.kernel='numpy'", "one of auto, native, torch"),
    ("trainer.threads=0", "trainer.threads=0", "a number of threads >= 1"),
    ("tracking.retry_s=0", "tracking.retry_s=0.0", "in (0, 3600]"),
    ("seed=-1", "seed=-1", "an integer >= 0"),
    ("+foo=1", "foo is not a key", "top-level keys are model, optim, data"),
    ("+model.depth=3", "model.depth is not a key", "top-level keys"),
]


@pytest.mark.parametrize(("override", "names", "accepted"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_message(override, names, accepted):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert names in message and accepted in message
    assert "Traceback" not in message and len(message.split("\n\n")) == 1


def test_several_problems_are_reported_together():
    cfg = compose_cfg("optim.lr=0", "replicas=0")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "optim.lr=0.0" in str(err.value) and "replicas=0" in str(err.value)


def test_unknown_key_without_plus_is_refused_by_the_schema():
    with pytest.raises(ConfigCompositionException, match="foo"):
        compose_cfg("foo=1")


def test_wrong_type_is_refused_by_the_schema():
    with pytest.raises(ConfigCompositionException, match="optim.lr"):
        compose_cfg("optim.lr=fast")


def test_schema_is_the_base_of_the_config():
    cfg = compose_cfg()
    assert OmegaConf.get_type(cfg).__name__ == "Config"
    assert OmegaConf.get_type(cfg.model).__name__ == "ModelConfig"


def test_default_output_dirs_are_under_runs_hydra():
    from hydra.core.utils import setup_globals

    setup_globals()  # the `now` resolver, as in the app
    cfg = compose_cfg(hydra_node=True)
    root = CONF.parent / "runs" / "hydra"
    assert str(cfg.hydra.run.dir).startswith(f"{root}/")
    assert str(cfg.hydra.sweep.dir).startswith(f"{root}/multirun/")
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "experiments.callbacks.MlflowSweepCallback"


@pytest.mark.parametrize(
    ("preset", "sweep", "n_composed"),
    [
        ("grid", [], 1),  # 100 jobs, one composition
        # act1 fills the activations; experiment= is a config group: those jobs are composed
        ("quick", ["experiment=quick,report_faithful", "model.act1=tanh,relu", "optim.lr=0.1,0.3",
                   "optim=sgd"], 1 + 4),
    ],
)  # fmt: skip
def test_the_precheck_configs_are_those_hydra_composes(preset, sweep, n_composed):
    """The precheck composes the first job and sets the others' plain values on a copy: the
    same configs (and hashes) as composing each job, as the launcher will."""
    from experiments.callbacks import _job_configs, _task

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = [f"experiment={preset}", *sweep]
        jobs = _job_overrides(cfg)
        assert len(jobs) >= 8
        loader = GlobalHydra.instance().config_loader()
        composed_by_precheck = []

        class Counting:
            def load_sweep_config(self, config, overrides):
                composed_by_precheck.append(overrides)
                return loader.load_sweep_config(config, overrides)

        fast = list(_job_configs(Counting(), cfg, jobs))
        assert len(composed_by_precheck) == n_composed
        for overrides, job_cfg in zip(jobs, fast, strict=True):
            composed = _task(loader.load_sweep_config(cfg, overrides))
            assert flatten(job_cfg) == flatten(composed), overrides
            assert config_hash(job_cfg) == config_hash(composed)


def test_the_precheck_lists_the_jobs_as_hydras_sweeper_does():
    """The sweeper skips composing again the jobs the precheck listed: they must be the same
    lists of overrides, spelled the same, or the skip would silently never apply."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=grid"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = ["experiment=grid", "tracking.uri=sqlite:////tmp/a b.db"]
        args = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        parsed = OverridesParser.create().parse_overrides(args + list(cfg.hydra.overrides.task))
        (hydras,) = BasicSweeper.split_arguments(parsed, None)
        assert _job_overrides(cfg) == hydras and len(hydras) == 100


def test_hydra_composes_again_only_the_jobs_the_precheck_did_not_check():
    from types import SimpleNamespace

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from experiments.callbacks import _skip_second_composition

    composed = []

    def load_sweep_config(master_config, sweep_overrides):
        composed.append(sweep_overrides)

    sweeper = BasicSweeper(max_batch_size=None)
    sweeper.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(
        load_sweep_config=load_sweep_config))  # fmt: skip
    sweeper.config = OmegaConf.create()
    batch = [["a=1", "b=2"], ["a=1", "b=3"], ["a=2", "b=2"]]
    _skip_second_composition([{"overrides": ["a=1", "b=2"]}, {"overrides": ["a=1", "b=3"]}])
    sweeper.validate_batch_is_legal(batch)
    assert composed == [["a=2", "b=2"]]
    _skip_second_composition(None)  # a sweep the precheck could not list: Hydra checks all
    composed.clear()
    sweeper.validate_batch_is_legal(batch)
    assert composed == batch
