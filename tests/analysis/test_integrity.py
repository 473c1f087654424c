"""Duplicates, incomplete sweeps and the default selection's skipping of unfinished studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import overrides

from analysis.__main__ import main
from analysis.bootstrap import scipy_bootstrap
from analysis.collect import load_study
from analysis.errors import AnalysisError
from analysis.integrity import split_duplicates

FAST = ("--n-resamples", "1000", "--grid-resamples", "1000", "--no-mlflow")


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _report(out: str) -> tuple[str, dict]:
    md = Path(out.rstrip().rsplit("report: ", 1)[1])
    return md.read_text(), json.loads((md.parent / "summary.json").read_text())


def test_split_duplicates_keeps_latest_finished_by_end_then_start() -> None:
    rows = [  # run_id, config_hash, seed, status, start_time, end_time
        ("a", "h1", 0, "FINISHED", 10, 100),
        ("b", "h1", 0, "FINISHED", 5, 200),  # started earlier, ended later: kept
        ("c", "h1", 0, "KILLED", 20, 300),  # latest, but not FINISHED
        ("d", "h1", 1, "FINISHED", 1, 50),
        ("e", "h1", 1, "FINISHED", 2, 50),  # same end, later start: kept
        ("f", "h2", 0, "FAILED", 1, 10),  # nothing FINISHED: the latest ended is kept
        ("g", "h2", 0, "RUNNING", 2, None),
        ("x", "", 0, "FINISHED", 1, 5),  # no config hash: cannot be matched, both kept
        ("y", "", 0, "FINISHED", 2, 6),
    ]
    cols = ["run_id", "config_hash", "seed", "status", "start_time", "end_time"]
    kept, dups = split_duplicates(pd.DataFrame(rows, columns=cols))
    assert sorted(kept["run_id"]) == ["b", "e", "f", "x", "y"]
    assert dict(zip(dups["run_id"], dups["kept_run_id"], strict=True)) == {
        "a": "b",
        "c": "b",
        "d": "e",
        "g": "f",
    }
    assert list(kept.columns) == cols  # helper columns gone


def test_all_over_a_study_run_twice_counts_each_seed_once(
    store, tmp_path, capsys, no_figures
) -> None:
    first = np.round(np.linspace(0.970, 0.990, 20), 4)
    second = np.round(np.linspace(0.975, 0.995, 20)[::-1], 4)
    store.study(seeds=20, accuracies=[first])
    store.study(seeds=20, accuracies=[second])
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--all", "--out", str(tmp_path),
                          "-q", *FAST)  # fmt: skip
    assert code == 0, err
    assert "runs: 40 replica, 20 duplicate(s) set aside, 20 used," in out
    assert "this study, standard       20" in out
    assert "warning: 20 replica run(s) repeat a configuration" in err  # shown despite -q
    md, summary = _report(out)
    assert "40 replica runs in 2 job run(s): 20 duplicate(s)" in md
    assert "## Completeness" in md and "20 replica run(s) repeat a configuration" in md
    assert summary["counts"]["duplicates"] == 20 and summary["counts"]["used"] == 20
    assert len(summary["duplicates"]) == 20
    # The second (latest FINISHED) study's values, and its interval, not one of 40 values.
    assert sorted(summary["final_test_acc"]) == pytest.approx(sorted(second))
    boot = summary["bootstrap"]["standard"]["mean"]
    alone = scipy_bootstrap(second, n_resamples=1000, seed=0).mean
    assert (boot["low"], boot["high"]) == pytest.approx((alone.low, alone.high))
    doubled = scipy_bootstrap(np.r_[first, second], n_resamples=1000, seed=0).mean
    assert boot["high"] - boot["low"] > 1.2 * doubled.width


def _killed_sweep(store, grid_configs, **kw):
    """A 3-job sweep killed in its second job: job 0 FINISHED, job 1 KILLED, job 2 never ran."""
    return store.study(
        experiment="grid",
        study="grid",
        configs=grid_configs[:3],
        seeds=2,
        job_status={1: "KILLED"},
        not_run=[2],
        sweep_status="KILLED",
        **kw,
    )


def test_incomplete_sweep_by_run_id_names_missing_jobs(
    store, grid_configs, tmp_path, capsys, no_figures
) -> None:
    killed = _killed_sweep(store, grid_configs)
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--run-id", killed.top_run_id,
                          "--out", str(tmp_path), *FAST)  # fmt: skip
    assert code == 0, err
    missing = [" ".join(overrides(*grid_configs[c])) for c in (1, 2)]
    sentence = (
        f"sweep {killed.top_run_id} (KILLED) is incomplete: 1 of 3 planned job(s) FINISHED; "
        f"missing: {missing[0]}; {missing[1]}."
    )
    assert f"minitorch-analysis: warning: {sentence}" in err
    assert ", 1 incomplete sweep(s)" in out
    md, summary = _report(out)
    assert f"- {sentence}" in md
    assert f"`{killed.top_run_id}` (sweep, KILLED)" in md
    (sweep,) = summary["sweeps"]
    assert (sweep["planned"], sweep["finished"], sweep["complete"]) == (3, 1, False)
    assert sweep["missing"] == missing
    assert summary["counts"]["incomplete_sweeps"] == 1 and summary["counts"]["killed"] == 2


@pytest.mark.parametrize("job_list", ["absent", "format 2"])
def test_incomplete_sweep_without_job_list_gives_counts(store, grid_configs, job_list) -> None:
    killed = _killed_sweep(store, grid_configs, sweep_jobs_file=job_list != "absent")
    note = ""
    if job_list == "format 2":  # a newer harness's file: not guessed at, said so
        logged = load_study(store.uri, run_id=killed.top_run_id, curves=None).top_runs[0]
        path = Path(logged.info.artifact_uri.removeprefix("file://")) / "sweep_jobs.json"
        path.write_text(json.dumps({"format": 2, "jobs": []}))
        note = " (sweep_jobs.json has format 2; this analysis reads format 1)"
    (check,) = load_study(store.uri, run_id=killed.top_run_id, curves=None).sweeps
    assert not check.complete and check.missing == []
    lr, bs, _ = grid_configs[1]
    assert check.describe() == (
        f"sweep {killed.top_run_id} (KILLED) is incomplete: 1 of 3 planned job(s) FINISHED; "
        f"it has no usable sweep_jobs.json to name the missing configurations{note}; job runs "
        f"that did not finish: experiment=grid optim.lr={lr} trainer.batch_size={bs} (KILLED)."
    )


def test_rerun_sweep_counts_rerun_jobs_once(store, grid_configs) -> None:
    killed = _killed_sweep(store, grid_configs)
    store.study(experiment="grid", study="grid", configs=grid_configs[1:3], seeds=2,
                sweep_run_id=killed.top_run_id)  # fmt: skip
    study = load_study(store.uri, experiment="grid", curves=None)
    assert [r.info.run_id for r in study.top_runs] == [killed.top_run_id]
    (check,) = study.sweeps
    assert (check.planned, check.finished, check.complete) == (3, 3, True)
    c = study.counts()
    # Job 1's two KILLED replicas are set aside for the re-run's FINISHED ones.
    assert (c["replica_runs"], c["duplicates"], c["used"], c["killed"]) == (8, 2, 6, 0)
    assert (c["job_runs"], c["failed_jobs"], c["rerun_jobs"]) == (4, 0, 1)
    assert set(study.duplicates["status"]) == {"KILLED"}
    assert study.warnings() == [f"{len(study.duplicates)} replica run(s) repeat a configuration "
                                "(mtl.config_hash) and seed already selected and were set aside: "
                                "each counts once, the latest FINISHED run kept (summary.json "
                                "lists them under duplicates)."]  # fmt: skip


def test_default_skips_a_crashed_newest_study(store, tmp_path, capsys, no_figures) -> None:
    store.study(seeds=3)
    crashed = store.study(seeds=4, job_status={0: "RUNNING"})
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--out", str(tmp_path), *FAST)
    assert code == 0, err
    note = f"skipped {crashed.top_run_id} (job, RUNNING: crashed or still running): not FINISHED"
    assert note in err
    assert "this study, report method  3" in out
    md, summary = _report(out)
    assert f"- {note}" in md
    assert summary["selection"]["skipped"] == [
        {"run_id": crashed.top_run_id, "kind": "job", "status": "RUNNING"}
    ]


def test_all_skips_every_unfinished_study(store) -> None:
    killed = store.study(seeds=2, job_status={0: "KILLED"})
    done = store.study(seeds=3)
    study = load_study(store.uri, all_runs=True, curves=None)
    assert [r.info.run_id for r in study.top_runs] == [done.top_run_id]
    assert [r.info.run_id for r in study.skipped] == [killed.top_run_id]
    assert study.counts()["skipped_top_runs"] == 1
    latest = load_study(store.uri, curves=None)  # the killed one is older: nothing skipped
    assert latest.skipped == []


def test_nothing_finished_is_one_paragraph_naming_the_runs(store, grid_configs, capsys) -> None:
    crashed = store.study(seeds=2, job_status={0: "RUNNING"})
    killed = _killed_sweep(store, grid_configs)
    with pytest.raises(AnalysisError) as info:
        load_study(store.uri, tags={"mtl.study": "report"})
    msg = str(info.value)
    assert msg.startswith("no FINISHED sweep or job run matches mtl.study=report")
    assert f"{crashed.top_run_id} (job of study report, RUNNING: crashed or still running" in msg
    assert "--run-id <id>" in msg
    code, out, err = _run(capsys, "--tracking-uri", store.uri, "--experiment", "grid", *FAST)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"found 1 that did not finish: {killed.top_run_id} (sweep of study grid, KILLED" in err
    assert err.count("\n") == 1  # one paragraph
