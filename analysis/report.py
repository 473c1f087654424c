"""Bootstrap a study, draw its figures, write report.md + summary.json, log them to MLflow.

The headline configuration (the report's final one if the study has it, else the best-ranked)
is bootstrapped twice, by the report's m-out-of-n method and by the standard n-out-of-n one;
report.md (templates/report.md, filled by report_text.py) sets both against the report.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import figures
from analysis.bootstrap import BootstrapResult, m_out_of_n_bootstrap, scipy_bootstrap
from analysis.collect import Study
from analysis.errors import AnalysisError
from analysis.output import (
    Analysis,
    Options,
    analysis_info,
    check_options,
    count,
    finish,
    fmt_iv,
    log_analysis_run,
    published,
    render_markdown,
    render_text,
    report_dir,
    resample_size,
    say,
)
from analysis.published import REPORT, REPORT_CONFIG
from analysis.report_text import ReportInputs, render
from experiments.provenance import environment, git_state
from experiments.record_format import VERSION, Kind, Tag

__all__ = ["Analysis", "Options", "analyse", "check_options", "comparison", "config_table"]


def _axes(df: pd.DataFrame) -> pd.DataFrame:
    """Add lr, batch_size, activations, loss columns from the params (NaN/"?"/"" if absent)."""
    df = df.copy()
    df["lr"] = df.get("params.optim.lr", np.nan)
    df["batch_size"] = df.get("params.trainer.batch_size", -1)
    df["activations"] = df.get("params.model.activations", "?")
    df["activations"] = df["activations"].astype(str).str.strip("[]")  # tanh,tanh,tanh
    loss = df.get("params.model.loss", pd.Series("", index=df.index, dtype=object))
    df["loss"] = loss.fillna("").astype(str).str.upper()  # MSE, MAE: as the report names them
    return df


def config_table(
    study: Study, *, confidence: float, method: str, n_resamples: int, seed: int
) -> pd.DataFrame:
    """One row per configuration: grid axes, run counts, mean test accuracy and its interval.

    Job runs that failed before logging any replica get a row too (n_runs 0, failed_job True).
    """
    r = _axes(study.runs)
    has_hash = len(r) and r["config_hash"].astype(bool).all()
    key = "config_hash" if has_hash else ["lr", "batch_size", "activations", "loss"]
    usable = set(study.usable["run_id"])
    rows = []
    for _, g in r.groupby(key, sort=False):
        first = g.iloc[0]
        ok = g[g["run_id"].isin(usable)]
        vals = ok["final_test_acc"].to_numpy()
        row = {
            "config_hash": first["config_hash"],
            "lr": first["lr"],
            "batch_size": first["batch_size"],
            "activations": first["activations"],
            "loss": first["loss"],
            "n_runs": len(g),
            "n_used": len(ok),
            "n_diverged": int(g["diverged"].sum()),
            "n_failed": int((g["status"] != "FINISHED").sum()),
            "failed_job": False,
            "mean": float(vals.mean()) if len(vals) else math.nan,
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
            "low": math.nan,
            "high": math.nan,
            "run_ids": list(ok["run_id"]),
        }
        if len(vals) >= 2:
            res = scipy_bootstrap(
                vals, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed
            )
            row["low"], row["high"] = res.mean.low, res.mean.high
        rows.append(row)
    rows += _failed_job_rows(study)
    df = pd.DataFrame(rows)
    df["label"] = [
        f"lr {lr:g}, batch {bs}, {act}"
        for lr, bs, act in zip(df["lr"], df["batch_size"], df["activations"], strict=True)
    ]
    return df.sort_values("mean", ascending=False, na_position="last").reset_index(drop=True)


def _failed_job_rows(study: Study) -> list[dict]:
    """A row per configuration whose job runs all failed before logging a counted replica."""
    if not len(study.jobs):
        return []
    r = study.runs
    seen_jobs = set(r["job_run_id"]) if len(r) else set()
    seen = set(r["config_hash"]) - {""} if len(r) else set()
    done = set(study.jobs.loc[study.jobs["status"] == "FINISHED", "config_hash"]) - {""}
    rows = []
    for j in _axes(study.jobs).itertuples():
        if j.status == "FINISHED" or j.run_id in seen_jobs or j.config_hash in seen | done:
            continue
        if j.config_hash:
            seen.add(j.config_hash)  # a configuration killed twice is one row
        nan = math.nan
        rows.append(
            {
                "config_hash": j.config_hash,
                "lr": j.lr,
                "batch_size": j.batch_size,
                "activations": j.activations,
                "loss": j.loss,
                **dict(n_runs=0, n_used=0, n_diverged=0, n_failed=0, failed_job=True),
                **dict(mean=nan, std=nan, low=nan, high=nan, run_ids=[]),
            }
        )
    return rows


def _pick_headline(configs: pd.DataFrame) -> tuple[pd.Series, str]:
    """The report's configuration if the grid has it, else the best-ranked one."""
    is_report = (
        np.isclose(configs["lr"].astype(float), REPORT_CONFIG["lr"])
        & (configs["batch_size"] == REPORT_CONFIG["batch_size"])
        & (configs["activations"] == REPORT_CONFIG["activations"])
        & (configs["n_used"] >= 2)
    )
    if is_report.any():
        return configs[is_report].iloc[0], "the report's final configuration"
    usable = configs[configs["n_used"] >= 2]
    if usable.empty:
        raise AnalysisError(
            "no configuration of the selected study has 2 or more usable (finished, not "
            "diverged) runs, so no interval can be computed; counts per configuration: "
            + "; ".join(f"{r.label}: {r.n_used}/{r.n_runs}" for r in configs.itertuples())
        )
    return usable.iloc[0], "the best-ranked configuration"


def comparison(n_used: int, ours: list[BootstrapResult]) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of the table "this study vs the report" (percent, percentage points)."""
    rows = [
        {
            "source": "report (published)",
            "runs": str(REPORT["runs"]),
            "mean (%)": "n/a",
            "mean 99% CI": f"[{REPORT['mean'][0]:.2f}, {REPORT['mean'][1]:.2f}]",
            "CI width": f"{REPORT['mean'][1] - REPORT['mean'][0]:.3f}",
            "std (pp)": "n/a",
            "std 99% CI": f"[{REPORT['std'][0]:.2f}, {REPORT['std'][1]:.2f}]",
            "method": "m-out-of-n percentile, 10^6 x 100",
        }
    ]
    for res in ours:
        pct = f"{res.confidence * 100:g}% CI"
        rows.append(
            {
                "source": f"this study, {'report method' if 'm-out' in res.method else 'standard'}",
                "runs": str(n_used),
                "mean (%)": f"{res.mean.estimate * 100:.2f}",
                "mean 99% CI": fmt_iv(res.mean.low, res.mean.high),
                "CI width": f"{res.mean.width * 100:.3f}",
                "std (pp)": f"{res.std.estimate * 100:.2f}",
                "std 99% CI": fmt_iv(res.std.low, res.std.high),
                "method": f"{res.method}, {count(res.n_resamples)} x {res.resample_size}",
            }
        )
        if pct != "99% CI":
            rows[-1]["method"] += f" ({pct})"
    return rows, list(rows[0])


def _provenance(study: Study) -> dict[str, object]:
    """summary.json's "selection": which runs were read, from where, made by what."""
    jobs = study.jobs
    top = study.top_runs
    return {
        "tracking_uri": study.tracking_uri,
        "experiments": sorted({r.info.experiment_id for r in top}),
        "top_run_ids": [r.info.run_id for r in top],
        "top_run_kinds": [r.data.tags.get(Tag.KIND, "") for r in top],
        "top_run_statuses": [r.info.status for r in top],
        "skipped": [
            {
                "run_id": r.info.run_id,
                "kind": r.data.tags.get(Tag.KIND, ""),
                "status": r.info.status,
            }
            for r in study.skipped
        ],
        "commands": sorted({r.data.tags.get(Tag.COMMAND, "") for r in top} - {""}),
        "git_commits": sorted(
            {r.data.tags.get(Tag.GIT_COMMIT, "") for r in top}
            | (set(jobs["git_commit"]) if len(jobs) else set())
        )
        or ["unknown"],
        "git_dirty": sorted(
            ({r.data.tags.get(Tag.GIT_DIRTY, "") for r in top} | set(jobs.get("git_dirty", [])))
            - {""}
        ),
        "job_overrides": sorted(set(jobs["overrides"])) if len(jobs) else [],
    }


def _log_to_mlflow(study: Study, out_dir: Path, summary: dict, opts: Options, name: str) -> str:
    """Log report.md, summary.json and figures as an analysis run linked by tags to the study."""
    top = study.top_runs
    tags = {
        Tag.FORMAT: VERSION,
        Tag.KIND: Kind.ANALYSIS,
        Tag.STUDY: study.study_name,
        Tag.GIT_COMMIT: summary["analysis"]["git_commit"],
        Tag.COMMAND: opts.command,
        **environment(),  # Python, library versions, CPU (experiments/provenance.py)
        # Own keys, not mtl.sweep_run_id / mtl.job_run_id: those mark a run as part of the study.
        Tag.ANALYSED_RUN_IDS: ",".join(r.info.run_id for r in top),
        Tag.ANALYSED_JOB_RUN_IDS: ",".join(study.jobs["run_id"]) if len(study.jobs) else "",
        "mlflow.note.content": f"Analysis of {study.study_name}: see report.md",
    }
    ts = int(time.time() * 1000)
    metrics = [
        Metric(f"{key}.{stat}_{part}", res[stat][part], ts, 0)
        for key, res in summary["bootstrap"].items()
        for stat in ("mean", "std")
        for part in ("estimate", "low", "high")
    ]
    metrics += [Metric(f"runs.{k}", float(v), ts, 0) for k, v in summary["counts"].items()]
    settings = {
        "n_resamples": opts.n_resamples,
        "resample_size": summary["bootstrap"]["report_method"]["resample_size"],
        "confidence": opts.confidence,
        "method": opts.method,
        "seed": opts.seed,
        "name": name,
    }
    params = [Param(k, str(v)) for k, v in settings.items()]
    client = MlflowClient(tracking_uri=study.tracking_uri)
    experiment_id = top[0].info.experiment_id
    return log_analysis_run(
        client, experiment_id, tags, f"analysis-{name}", out_dir, metrics, params
    )


def _out_dir(study: Study, opts: Options) -> tuple[str, Path]:
    """The report's name and folder, created now so that an unwritable --out fails first."""
    top_id = study.top_runs[0].info.run_id
    return report_dir(opts.name or f"{study.study_name}-{top_id[:8]}", opts)


def _no_replicas(study: Study, counts: dict[str, int]) -> AnalysisError:
    runs = ", ".join(
        f"{r.info.run_id} ({r.data.tags.get(Tag.KIND, '?')}, {r.info.status})"
        for r in study.top_runs
    )
    return AnalysisError(
        f"the selected run(s) {runs} have no replica runs ({counts['job_runs']} job run(s), "
        f"{counts['failed_jobs']} failed): nothing to bootstrap. Without --run-id the analysis "
        "takes the latest FINISHED study; choose another with --run-id <sweep or job run id> "
        "(listed by `mlflow runs list --experiment-id <id>`) or --tag mtl.study=<name>."
    )


def _bootstrap_both(
    values: np.ndarray, m: int, opts: Options
) -> tuple[BootstrapResult, BootstrapResult]:
    """The report's m-out-of-n bootstrap and the standard one, on the headline values."""
    n = len(values)
    say(opts, f"bootstrap (report's method): {opts.n_resamples} resamples of {m} from {n} runs")

    def progress(done: int, total: int) -> None:
        # Overwrite one status line on a terminal; in a log only the end is worth a line.
        if opts.verbose and sys.stderr.isatty():
            print(f"\r  {done / total:4.0%}", end="\n" if done == total else "", file=sys.stderr)

    mres = m_out_of_n_bootstrap(
        values,
        n_resamples=opts.n_resamples,
        resample_size=m,
        confidence=opts.confidence,
        seed=opts.seed,
        progress=progress,
    )
    say(opts, f"  {mres.seconds:.2f} s; standard bootstrap ({opts.method}, n out of n) ...")
    sres = scipy_bootstrap(
        values,
        n_resamples=opts.n_resamples,
        confidence=opts.confidence,
        method=opts.method,
        seed=opts.seed,
    )
    say(opts, f"  {sres.seconds:.2f} s; figures ...")
    return mres, sres


def _figures(
    study: Study,
    head: pd.Series,
    configs: pd.DataFrame,
    results: list[BootstrapResult],
    fig_dir: Path,
    confidence: float,
    method: str,
) -> dict[str, Path]:
    """Draw and save every figure of the report; returns stem -> PNG path."""
    head_runs = study.runs.set_index("run_id").loc[head["run_ids"]]
    curves = study.curves[study.curves["run_id"].isin(head["run_ids"])]
    made: dict[str, figures.Figure] = {}
    if len(curves):
        first = head_runs.sort_values("seed").index[0]
        setting = (
            f"lr {head['lr']:g}, batch {head['batch_size']}, {head['activations']}, "
            f"{int(curves['epoch'].max())} epochs"
        )
        made.update(
            figures.curve_figures(
                curves, first, head_runs.loc[first, "seed"], confidence=confidence,
                setting=setting, loss=head["loss"] or None,
            )
        )  # fmt: skip
    made["bootstrap"] = figures.bootstrap_figure(
        results,
        reference={"mean": REPORT["mean"], "std": REPORT["std"]},
        reference_label="report (99%)",
    )
    if len(configs) > 1:
        made["grid_ranked"] = figures.ranked_figure(configs, confidence=confidence, method=method)
        made["grid_heatmap"] = figures.heatmap_figure(configs)
        if len(study.curves):
            made["grid_accuracy_vs_epochs"] = figures.grid_curves_figure(study.curves, configs)
    return {stem: figures.save(fig, fig_dir, stem) for stem, fig in made.items()}


def _summary(
    study: Study,
    opts: Options,
    name: str,
    head: pd.Series,
    head_why: str,
    values: np.ndarray,
    results: tuple[BootstrapResult, BootstrapResult],
    configs: pd.DataFrame,
) -> dict:
    """Everything summary.json holds (figures and MLflow ids are added by the caller)."""
    head_runs = study.runs.set_index("run_id").loc[head["run_ids"]]
    n_test = head_runs["params.data.n_test"].iloc[0] if "params.data.n_test" in head_runs else "?"
    dups = study.duplicates
    return {
        "name": name,
        "headline": f"{head['label']}: {len(values)} runs",
        "study": study.study_name,
        "selection": _provenance(study),
        "counts": study.counts(),
        "warnings": study.warnings(limit=None),
        "duplicates": [
            {"run_id": d.run_id, "kept_run_id": d.kept_run_id, "status": d.status}
            for d in dups.itertuples()
        ],
        "sweeps": [sw.as_dict() for sw in study.sweeps],
        "headline_config": {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in head.drop(labels=["run_ids"]).items()
        },
        "headline_reason": head_why,
        "loss": head["loss"] or "not recorded",  # the headline runs' model.loss
        "n_test": n_test if isinstance(n_test, str) else int(n_test),
        "final_test_acc": [float(v) for v in values],
        "bootstrap": {"report_method": results[0].as_dict(), "standard": results[1].as_dict()},
        "report": published(),
        "configs": [
            {k: v for k, v in r.items() if k != "run_ids"} for r in configs.to_dict("records")
        ],
        "curves": {
            "source": study.curves_source,
            "seconds": round(study.curves_seconds, 3),
            "missing": study.curves_missing,
        },
        "analysis": analysis_info(opts, git_state().commit),
    }


def analyse(study: Study, opts: Options) -> Analysis:
    """Run the whole analysis of ``study`` and write the report; see the module docstring."""
    check_options(opts)
    if study.counts()["replica_runs"] == 0:
        raise _no_replicas(study, study.counts())
    say(opts, f"configurations: ranking with {opts.method} ({opts.grid_resamples} resamples)")
    configs = config_table(
        study,
        confidence=opts.confidence,
        method=opts.method,
        n_resamples=opts.grid_resamples,
        seed=opts.seed,
    )
    head, head_why = _pick_headline(configs)
    values = study.usable.set_index("run_id").loc[head["run_ids"], "final_test_acc"].to_numpy()
    m = resample_size(opts, len(values), head["label"])
    name, out_dir = _out_dir(study, opts)
    mres, sres = _bootstrap_both(values, m, opts)
    figs = _figures(
        study, head, configs, [mres, sres], out_dir / "figures", opts.confidence, opts.method
    )
    rows, cols = comparison(len(values), [mres, sres])
    summary = _summary(study, opts, name, head, head_why, values, (mres, sres), configs)
    summary["figures"] = {k: str(v.relative_to(out_dir)) for k, v in figs.items()}
    report_md = out_dir / "report.md"
    figs_rel = {k: v.relative_to(out_dir).as_posix() for k, v in figs.items()}
    inputs = ReportInputs(
        study, summary, render_markdown(rows, cols), mres, sres, configs, figs_rel
    )
    report_md.write_text(render(inputs))
    rid, err = finish(
        out_dir,
        summary,
        opts,
        tracking_uri=study.tracking_uri,
        log=lambda: _log_to_mlflow(study, out_dir, summary, opts, name),
        what="report",
    )
    return Analysis(out_dir, report_md, summary, render_text(rows, cols), rid, err)
