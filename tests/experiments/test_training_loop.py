"""train_replicas: learning, replica equivalence, divergence, sharding over workers; TrainSpec:
its defaults are the config's, its checks name the value and what is accepted."""

from __future__ import annotations

import pytest
import torch

from experiments.spec import KERNELS, SpecError, TrainSpec
from experiments.training import eval_epochs_for, train_replicas

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


def test_test_model_learns_the_disk():
    # The report's final model (3 Tanh, lr 0.01, batch 25), 500 epochs, one fixed seed.
    result = train_replicas([0], TrainSpec(epochs=500, eval_every=100))
    assert result.test_acc[0, -1] > 0.9
    assert result.train_loss[0, -1] < 0.5 * result.train_loss[0, 0]
    assert result.eval_epochs.tolist() == [0, 100, 200, 300, 400, 500]
    assert not result.diverged.any()


def test_replica_equals_the_same_seed_alone():
    kw = dict(epochs=30, eval_every=10, n_train=200, n_test=100, batch_size=25)
    many = train_replicas(range(0, 9), TrainSpec(**kw))
    alone = train_replicas([7], TrainSpec(**kw))
    for name in METRICS:
        got, want = getattr(many, name)[7], getattr(alone, name)[0]
        assert (got - want).abs().max().item() <= 1e-5, name
    for key, value in alone.state.items():
        assert (many.state[key][7] - value[0]).abs().max().item() <= 1e-6, key


def test_uneven_last_batch_and_pm1_encoding():
    spec = TrainSpec(
        epochs=3,
        eval_every=2,
        n_train=110,
        n_test=30,
        batch_size=25,
        encoding="pm1",
        activations=("relu", "tanh", "sigmoid"),
    )
    res = train_replicas([1, 2], spec)
    assert res.eval_epochs.tolist() == [0, 2, 3]
    assert res.train_loss.shape == (2, 3) and torch.isfinite(res.train_loss).all()


def test_diverging_replica_is_frozen_and_the_others_go_on():
    kw = dict(epochs=20, eval_every=5, n_train=200, n_test=100)
    res = train_replicas([0, 1, 2], TrainSpec(lr=[0.01, 1e4, 0.01], **kw))
    ref = train_replicas([0, 2], TrainSpec(lr=0.01, **kw))
    assert res.diverged.tolist() == [False, True, False]
    assert res.diverged_epoch[1] >= 1 and res.diverged_epoch[0] == -1
    assert torch.isnan(res.test_acc[1, -1])
    for name in METRICS:
        torch.testing.assert_close(getattr(res, name)[[0, 2]], getattr(ref, name))


def test_workers_shard_and_merge_in_seed_order():
    kw = dict(epochs=10, eval_every=5, n_train=100, n_test=50)
    one = train_replicas([4, 5, 6], TrainSpec(workers=1, **kw))
    two = train_replicas([4, 5, 6], TrainSpec(workers=2, **kw))
    assert two.seeds == [4, 5, 6]
    for name in METRICS:
        torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=0, atol=1e-6)


def test_threads_split_the_replicas_and_torch_threads_are_restored():
    kw = dict(epochs=10, eval_every=5, n_train=100, n_test=50)
    one = train_replicas([4, 5, 6], TrainSpec(threads=1, **kw))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        two = train_replicas([4, 5, 6], TrainSpec(threads=2, **kw))
        assert torch.get_num_threads() == 3
        train_replicas([4, 5, 6], TrainSpec(workers=2, **kw))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    for name in METRICS:
        torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=0, atol=0)


def test_eval_points_always_include_the_last_epoch():
    assert eval_epochs_for(25, 10).tolist() == [0, 10, 20, 25]


def test_spec_defaults_are_the_configs():
    from experiments.config import spec_values, validate
    from tests.experiments.conftest import compose_cfg

    cfg = compose_cfg()
    assert validate(cfg) == TrainSpec() == TrainSpec(**spec_values(cfg))
    assert TrainSpec(hidden=[25, 25, 25], lr=[0.1, 0.2]) == TrainSpec(lr=(0.1, 0.2))


def test_the_kernel_is_passed_and_the_one_that_ran_is_recorded():
    kw = dict(epochs=4, eval_every=2, n_train=50, n_test=20)
    torch_run = train_replicas([0, 1], TrainSpec(kernel="torch", **kw))
    assert torch_run.kernel == "torch"
    auto = train_replicas([0, 1], TrainSpec(workers=2, **kw))
    assert auto.kernel in ("native", "torch")
    for name in METRICS:  # either kernel, the same training (to float tolerance)
        torch.testing.assert_close(getattr(auto, name), getattr(torch_run, name), atol=1e-5, rtol=0)
    assert set(KERNELS) == {"auto", "native", "torch"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), r"^TrainSpec: lr=0.0 is not accepted: a finite learning rate > 0, e\.g\."),
        (dict(lr=(0.01, float("nan"))), r"lr=\[0.01, nan\] is not accepted: a finite learning"),
        (dict(batch_size=0), r"batch_size=0 is not accepted: an integer from 1 to n_train=1000 "),
        (dict(activations=("tanh",)), r"activations=\['tanh'\] has 1 entries but hidden="),
        (dict(init="he"), r"init='he' is not accepted: one of torch, xavier, normal\.$"),
        (dict(kernel="numpy"), r"kernel='numpy' is not accepted: one of auto, native, torch "),
        (dict(threads=0), r"threads=0 is not accepted: a number of threads >= 1"),
        (dict(epochs=2.5), r"epochs=2.5 is not accepted: a number of epochs > 0"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(SpecError, match=message):
        TrainSpec(**{"epochs": 1, **kwargs})


def test_several_bad_values_are_named_together_and_train_replicas_checks_the_rest():
    with pytest.raises(ValueError) as err:
        TrainSpec(epochs=0, workers=0)
    assert str(err.value).split("\n\n") == [
        "TrainSpec: epochs=0 is not accepted: a number of epochs > 0.",
        "TrainSpec: workers=0 is not accepted: a number of processes >= 1.",
    ]
    with pytest.raises(
        ValueError, match=r"lr=\[0.1, 0.2\] is not accepted; expected one value or 3"
    ):
        train_replicas([0, 1, 2], TrainSpec(epochs=1, lr=(0.1, 0.2)))
    with pytest.raises(
        ValueError, match=r"spec=\{'epochs': 1\} is not accepted; expected a TrainSpec"
    ):
        train_replicas([0], {"epochs": 1})
