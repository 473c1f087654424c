"""The declared record: run names that fit the runs table, filters that quote their values."""

from __future__ import annotations

from experiments.record_format import (
    NAME_LENGTH,
    Kind,
    Tag,
    job_name,
    replica_name,
    sweep_name,
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
