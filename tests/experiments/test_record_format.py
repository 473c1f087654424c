"""The declared record: run names that fit the runs table, filters that quote their values."""

from __future__ import annotations

from experiments.record_format import (
    DIVERGED_METRIC,
    FINAL,
    NAME_LENGTH,
    STATS,
    TEST_ACC_MEAN,
    VERSION,
    Kind,
    Tag,
    job_name,
    metrics_v2,
    params_v2,
    replica_name,
    split_config,
    sweep_name,
    time_key,
    where,
)


def test_job_names_show_what_the_sweep_varies_in_few_characters():
    swept = {
        "trainer.batch_size": "10",
        "optim.lr": "0.03",
        "model.activations": "[tanh,tanh,relu]",
    }
    assert job_name(swept, 19, "grid") == "j19 bs10 lr0.03 tanh-tanh-relu"
    alone = {"optim.lr": "0.01", "trainer.batch_size": "25",
             "model.activations": "tanh,tanh,tanh", "replicas": "110"}  # fmt: skip
    assert job_name(alone, None, "report") == "report lr0.01 bs25 tanh-tanh-tanh x110"
    assert (
        job_name({"model.act1": "relu", "model.hidden": "[50, 50]"}, 3, "g") == "j3 a1=relu h50-50"
    )
    long = {f"some.key{i}": "x" * 10 for i in range(10)}
    assert len(job_name(long, 999, "grid")) == NAME_LENGTH


def test_replica_and_sweep_names():
    assert replica_name(5, 19, "grid") == "s5 j19"
    assert replica_name(5, None, "report") == "s5 report"
    axes = ["trainer.batch_size", "optim.lr", "model.activations"]
    assert sweep_name("grid", 100, axes) == "sweep grid x100: bs lr acts"
    assert sweep_name("quick", None, []) == "sweep quick"


def test_where_builds_mlflow_filters_with_quoted_values():
    assert where(**{Tag.KIND: Kind.JOB}) == "tags.`mtl.kind` = 'job'"
    flt = where(**{Tag.STUDY: "it's"}, status="FINISHED")
    assert flt == "tags.`mtl.study` = 'it\\'s' and attributes.status = 'FINISHED'"


def test_params_hold_the_science_and_tags_how_it_ran():
    flat = {"model.activations": "[tanh,tanh,relu]", "optim.lr": "0.003", "seed": "4",
            "replicas": "10", "trainer.batch_size": "10", "trainer.threads": "2",
            "tracking.uri": "sqlite:///x.db"}  # fmt: skip
    params, tags = split_config(flat)
    assert params == {"model.activations": "[tanh,tanh,relu]", "optim.lr": "0.003",
                      "replicas": "10", "trainer.batch_size": "10", "acts": "TTR",
                      "log10_lr": "-2.52"}  # fmt: skip
    assert tags == {"mtl.cfg.trainer.threads": "2", "mtl.cfg.tracking.uri": "sqlite:///x.db"}
    params, tags = split_config(flat, seed=7)  # a replica run: its seed; replicas is a tag
    assert params["seed"] == "7" and "replicas" not in params
    assert tags["mtl.cfg.replicas"] == "10"


def test_format_1_runs_read_under_format_2_names():
    v1 = {"final_test_acc": 0.98, "diverged": 0.0, "test_acc_std": 0.01, "time_train_s": 3.0,
          "test_acc_mean": 0.97, "best_test_acc_mean": 0.99}  # fmt: skip
    assert metrics_v2(v1, "1") == {
        FINAL["test_acc"]: 0.98, DIVERGED_METRIC: 0.0, STATS["test_acc_std"]: 0.01,
        "time_train_s": 3.0, time_key("train"): 3.0, TEST_ACC_MEAN: 0.99,
    }  # fmt: skip
    assert metrics_v2({"x": 1.0}, VERSION) == {"x": 1.0}
    assert params_v2({"model.activations": "tanh,relu", "optim.lr": "0.1"}, None) == {
        "model.activations": "[tanh,relu]", "optim.lr": "0.1"}  # fmt: skip
