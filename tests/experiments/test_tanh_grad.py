"""model.tanh_grad: checked, hashed, in the report_faithful preset, and passed to training."""

from __future__ import annotations

import pytest
import torch

import minitorch as mt
from experiments import config
from experiments.config import ConfigError, config_hash, flatten, validate
from experiments.spec import SpecError, TrainSpec
from experiments.training import Checkpointing, train_replicas
from tests.experiments.conftest import compose_cfg


def test_accepted_values_are_minitorchs():
    assert config.TANH_GRADS == mt.TANH_GRADS
    assert compose_cfg().model.tanh_grad == "exact"


def test_bad_tanh_grad_is_one_paragraph_naming_value_and_choices():
    cfg = compose_cfg("model.tanh_grad=sech2")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.tanh_grad='sech2' is not accepted: exact (Tanh backward")
    assert "or report (by the report's 4 / (e^s + e^-s) = 2 sech(s)" in message


def test_tanh_grad_is_part_of_the_config_hash():
    exact, report = compose_cfg(), compose_cfg("model.tanh_grad=report")
    assert flatten(report)["model.tanh_grad"] == "report"
    assert config_hash(exact) != config_hash(report)
    assert "model.tanh_grad" not in config.EXECUTION_KEYS


def test_report_faithful_is_the_report_study_with_the_reports_tanh_grad():
    cfg, exact = compose_cfg("experiment=report_faithful"), compose_cfg("experiment=report")
    validate(cfg)
    assert (cfg.model.tanh_grad, cfg.tracking.experiment) == ("report", "report_faithful")
    a, b = flatten(cfg), flatten(exact)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert differ == ["model.tanh_grad", "tracking.experiment"]


def test_train_replicas_passes_tanh_grad_to_the_model():
    kw = dict(epochs=5, eval_every=5, n_train=100, n_test=50)
    exact = train_replicas([3], TrainSpec(**kw))
    report = train_replicas([3], TrainSpec(tanh_grad="report", **kw))
    again = train_replicas([3], TrainSpec(tanh_grad="report", **kw))
    w_exact, w_report = exact.state["0.weight"], report.state["0.weight"]
    assert (w_exact - w_report).abs().max().item() > 1e-3
    assert torch.equal(w_report, again.state["0.weight"])


def test_the_spec_refuses_an_unknown_tanh_grad():
    with pytest.raises(SpecError, match=r"tanh_grad='sech' is not accepted: exact \(Tanh backward"):
        TrainSpec(epochs=1, tanh_grad="sech")


def test_a_checkpoint_resumes_only_under_the_same_tanh_grad(tmp_path, caplog):
    kw = dict(epochs=4, eval_every=2, n_train=50, n_test=20)
    train_replicas([0], TrainSpec(**kw), checkpoint=Checkpointing(tmp_path, every=2))
    with caplog.at_level("WARNING"):
        spec = TrainSpec(tanh_grad="report", **kw)
        train_replicas([0], spec, checkpoint=Checkpointing(tmp_path, every=2))
    assert "tanh_grad differ" in caplog.text
