"""Bootstrap a study, draw its figures, write report.md + summary.json, log them to MLflow."""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import figures
from analysis.bootstrap import (
    MAX_GRID_RESAMPLES,
    MAX_RESAMPLES,
    BootstrapResult,
    check_resample_count,
    m_out_of_n_bootstrap,
    normal_half_width,
    scipy_bootstrap,
)
from analysis.collect import Study
from analysis.errors import AnalysisError
from analysis.store import repo_root, store_error, store_errors
from experiments.record_format import VERSION, Kind, Tag

# The report's headline numbers (000_1aa516094fd27dfb.txt, section III.C), in percent.
REPORT = {
    "runs": 110,
    "n_resamples": 1_000_000,
    "resample_size": 100,
    "confidence": 0.99,
    "mean": (98.55, 98.63),
    "std": (0.53, 0.59),
    "setting": "lr 0.01, batch 25, tanh x3, 4000 epochs",
}
# The report's final model, used as the headline configuration when a grid contains it.
REPORT_CONFIG = {"lr": 0.01, "batch_size": 25, "activations": "tanh,tanh,tanh"}


@dataclass
class Options:
    """How to bootstrap and where to write; the CLI fills this from its arguments."""

    name: str | None = None
    out: Path | None = None  # reports root; default <repo>/runs/reports
    n_resamples: int = 1_000_000
    resample_size: int | None = None  # None: the report's 100, or n if fewer runs
    confidence: float = 0.99
    method: str = "BCa"
    seed: int = 0
    grid_resamples: int = 10_000
    log_to_mlflow: bool = True
    verbose: bool = True
    command: str = field(default_factory=lambda: shlex.join(["python", "-m", "analysis"]))


@dataclass
class Analysis:
    """What an analysis produced: where, the numbers, and the terminal table."""

    out_dir: Path
    report_md: Path
    summary: dict
    table: str
    analysis_run_id: str | None = None
    mlflow_error: str | None = None  # why the analysis run could not be logged (files written)


def check_options(opts: Options) -> None:
    """Refuse settings that cannot give the stated interval, before any run is read."""
    if not 0 < opts.confidence < 1:
        raise AnalysisError(
            f"--confidence {opts.confidence} must be strictly between 0 and 1 (e.g. 0.99)."
        )
    check_resample_count("--n-resamples", opts.n_resamples, MAX_RESAMPLES, opts.confidence)
    check_resample_count(
        "--grid-resamples", opts.grid_resamples, MAX_GRID_RESAMPLES, opts.confidence
    )
    if opts.resample_size is not None and opts.resample_size < 2:
        raise AnalysisError(
            f"--resample-size {opts.resample_size} is too small: each resample needs 2 values "
            "for a std (ddof=1); accepted: 2 to the number of usable runs (default 100, or n "
            "if fewer)."
        )


def resample_size(opts: Options, n: int, label: str) -> int:
    """m of the m-out-of-n bootstrap: --resample-size if given (at most n), else min(100, n)."""
    m = opts.resample_size
    if m is None:
        return min(REPORT["resample_size"], n)
    if m > n:
        raise AnalysisError(
            f"--resample-size {m} is larger than the {n} usable runs of {label}: resamples of "
            f"m > n values give an interval about sqrt(m/n) = {math.sqrt(m / n):.1f}x narrower "
            f"than {n} runs support. Accepted: 2 to {n}; the default is "
            f"{REPORT['resample_size']}, or n when there are fewer runs."
        )
    return m


def _say(opts: Options, msg: str) -> None:
    if opts.verbose:
        print(msg, file=sys.stderr, flush=True)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _axes(df: pd.DataFrame) -> pd.DataFrame:
    """Add lr, batch_size, activations columns from the params (NaN/"?" when absent)."""
    df = df.copy()
    df["lr"] = df.get("params.optim.lr", np.nan)
    df["batch_size"] = df.get("params.trainer.batch_size", -1)
    df["activations"] = df.get("params.model.activations", "?")
    df["activations"] = df["activations"].astype(str).str.strip("[]")  # tanh,tanh,tanh
    return df


def config_table(
    study: Study, *, confidence: float, method: str, n_resamples: int, seed: int
) -> pd.DataFrame:
    """One row per configuration: grid axes, run counts, mean test accuracy and its interval.

    Job runs that failed before logging any replica get a row too (n_runs 0, failed_job True).
    """
    r = _axes(study.runs)
    has_hash = len(r) and r["config_hash"].astype(bool).all()
    key = "config_hash" if has_hash else ["lr", "batch_size", "activations"]
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


def _count(k: int) -> str:
    """10^6 rather than 1000000 when k is a power of ten."""
    e = math.log10(k) if k > 0 else 0.5
    return f"10^{int(e)}" if e.is_integer() and k >= 1000 else f"{k:,}"


def _fmt_iv(low: float, high: float, scale: float = 100.0) -> str:
    return f"[{low * scale:.2f}, {high * scale:.2f}]"


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
                "mean 99% CI": _fmt_iv(res.mean.low, res.mean.high),
                "CI width": f"{res.mean.width * 100:.3f}",
                "std (pp)": f"{res.std.estimate * 100:.2f}",
                "std 99% CI": _fmt_iv(res.std.low, res.std.high),
                "method": f"{res.method}, {_count(res.n_resamples)} x {res.resample_size}",
            }
        )
        if pct != "99% CI":
            rows[-1]["method"] += f" ({pct})"
    return rows, list(rows[0])


def render_markdown(rows: list[dict[str, str]], cols: list[str]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def render_text(rows: list[dict[str, str]], cols: list[str]) -> str:
    """A fixed-width table for the terminal."""
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cols), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*(r[c] for c in cols)) for r in rows]
    return "\n".join(lines)


def _width_note(ours_m: BootstrapResult, ours_std: float, n: int) -> str:
    """The report's mean interval against what 110 runs with its std allow, computed."""
    conf = REPORT["confidence"]
    z = normal_half_width(1.0, 1, conf)
    half_report = (REPORT["mean"][1] - REPORT["mean"][0]) / 2
    lines = []
    for s in (REPORT["std"][0], 0.55):
        h = normal_half_width(s, REPORT["runs"], conf)
        lines.append(
            f"- with std {s:.2f} pp over {REPORT['runs']} runs: {z:.3f} x {s:.2f} / "
            f"sqrt({REPORT['runs']}) = {h:.3f} pp half-width; the report's half-width is "
            f"{half_report:.3f} pp, {h / half_report:.1f}x narrower."
        )
    h100 = normal_half_width(REPORT["std"][0], REPORT["resample_size"], conf)
    lines.append(
        f"- for resamples of {REPORT['resample_size']} (the report's m): {z:.3f} x "
        f"{REPORT['std'][0]:.2f} / sqrt({REPORT['resample_size']}) = {h100:.3f} pp, wider still."
    )
    w_std = REPORT["std"][1] - REPORT["std"][0]
    lines.append(
        f"- the std interval likewise: the report's width is {w_std:.2f} pp; the same method on "
        f"this study gives {ours_m.std.width * 100:.3f} pp "
        f"({ours_m.std.width * 100 / w_std:.1f}x wider)."
    )
    ours_h = normal_half_width(ours_std * 100, ours_m.resample_size, conf)
    lines.append(
        f"- this study: std {ours_std * 100:.3f} pp, m = {ours_m.resample_size}: normal-theory "
        f"half-width {ours_h:.3f} pp; the report-method bootstrap gives "
        f"{ours_m.mean.width * 100 / 2:.3f} pp."
    )
    return "\n".join(lines)


def _provenance(study: Study) -> dict[str, object]:
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
    client = MlflowClient(tracking_uri=study.tracking_uri)
    top = study.top_runs
    tags = {
        Tag.FORMAT: VERSION,
        Tag.KIND: Kind.ANALYSIS,
        Tag.STUDY: study.study_name,
        Tag.GIT_COMMIT: summary["analysis"]["git_commit"],
        Tag.COMMAND: opts.command,
        # Own keys, not mtl.sweep_run_id / mtl.job_run_id: those mark a run as part of the study.
        Tag.ANALYSED_RUN_IDS: ",".join(r.info.run_id for r in top),
        Tag.ANALYSED_JOB_RUN_IDS: ",".join(study.jobs["run_id"]) if len(study.jobs) else "",
        "mlflow.note.content": f"Analysis of {study.study_name}: see report.md",
    }
    run = client.create_run(top[0].info.experiment_id, tags=tags, run_name=f"analysis-{name}")
    rid = run.info.run_id
    try:
        ts = int(time.time() * 1000)
        metrics = []
        for key, res in summary["bootstrap"].items():
            for stat in ("mean", "std"):
                for part in ("estimate", "low", "high"):
                    metrics.append(Metric(f"{key}.{stat}_{part}", res[stat][part], ts, 0))
        metrics += [Metric(f"runs.{k}", float(v), ts, 0) for k, v in summary["counts"].items()]
        params = [
            Param(k, str(v))
            for k, v in {
                "n_resamples": opts.n_resamples,
                "resample_size": summary["bootstrap"]["report_method"]["resample_size"],
                "confidence": opts.confidence,
                "method": opts.method,
                "seed": opts.seed,
                "name": name,
            }.items()
        ]
        client.log_batch(rid, metrics=metrics, params=params)
        client.log_artifacts(rid, str(out_dir))
    except Exception:
        with contextlib.suppress(*store_errors()):
            client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return rid


def _out_dir(study: Study, opts: Options) -> tuple[str, Path]:
    """The report's name and folder, created now so that an unwritable --out fails first."""
    top_id = study.top_runs[0].info.run_id
    return report_dir(opts.name or f"{study.study_name}-{top_id[:8]}", opts)


def report_dir(name: str, opts: Options, what: str = "report") -> tuple[str, Path]:
    """(name, folder) of a report under --out (default runs/reports), created now so that a
    bad --name or an unwritable --out fails before any work."""
    if not name or "/" in name or name in (".", "..") or len(name) > 200:
        raise AnalysisError(
            f"--name {name[:80]!r} must be a plain directory name (no '/', at most 200 chars)."
        )
    out_dir = (opts.out or repo_root() / "runs" / "reports") / name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisError(
            f"cannot write the {what} to {out_dir} ({e.strerror or e}); choose a writable "
            "folder with --out DIR."
        ) from None
    return name, out_dir


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
    _say(opts, f"bootstrap (report's method): {opts.n_resamples} resamples of {m} from {n} runs")

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
    _say(opts, f"  {mres.seconds:.2f} s; standard bootstrap ({opts.method}, n out of n) ...")
    sres = scipy_bootstrap(
        values,
        n_resamples=opts.n_resamples,
        confidence=opts.confidence,
        method=opts.method,
        seed=opts.seed,
    )
    _say(opts, f"  {sres.seconds:.2f} s; figures ...")
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
                setting=setting,
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
        ]
        if len(dups)
        else [],
        "sweeps": [sw.as_dict() for sw in study.sweeps],
        "headline_config": {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in head.drop(labels=["run_ids"]).items()
        },
        "headline_reason": head_why,
        "n_test": n_test if isinstance(n_test, str) else int(n_test),
        "final_test_acc": [float(v) for v in values],
        "bootstrap": {"report_method": results[0].as_dict(), "standard": results[1].as_dict()},
        "report": {k: list(v) if isinstance(v, tuple) else v for k, v in REPORT.items()},
        "configs": [
            {k: v for k, v in r.items() if k != "run_ids"} for r in configs.to_dict("records")
        ],
        "curves": {
            "source": study.curves_source,
            "seconds": round(study.curves_seconds, 3),
            "missing": study.curves_missing,
        },
        "analysis": {
            "git_commit": _git_commit(),
            "command": opts.command,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }


def _log_or_explain(
    study: Study, out_dir: Path, summary: dict, opts: Options, name: str
) -> tuple[str | None, str | None]:
    """(analysis run id, None), or (None, one paragraph) when the store refuses the run."""
    _say(opts, "logging the report to MLflow as an analysis run ...")
    try:
        return _log_to_mlflow(study, out_dir, summary, opts, name), None
    except store_errors() as e:
        err = store_error(study.tracking_uri, e, "logging the analysis run")
        return None, (
            f"the report was written to {out_dir}, but {err} Re-run with --no-mlflow to skip "
            "logging the analysis run; the report files are complete without it."
        )


def analyse(study: Study, opts: Options) -> Analysis:
    """Run the whole analysis of ``study`` and write the report; see the module docstring."""
    check_options(opts)
    if study.counts()["replica_runs"] == 0:
        raise _no_replicas(study, study.counts())
    _say(opts, f"configurations: ranking with {opts.method} ({opts.grid_resamples} resamples)")
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
    table_md, table_txt = render_markdown(rows, cols), render_text(rows, cols)
    summary = _summary(study, opts, name, head, head_why, values, (mres, sres), configs)
    summary["figures"] = {k: str(v.relative_to(out_dir)) for k, v in figs.items()}
    md = _markdown(study, summary, table_md, mres, sres, configs, figs, out_dir, len(configs) > 1)
    report_md = out_dir / "report.md"
    report_md.write_text(md)
    _write_summary(out_dir / "summary.json", summary)
    rid = err = None
    if opts.log_to_mlflow:
        rid, err = _log_or_explain(study, out_dir, summary, opts, name)
        summary["analysis"].update(mlflow_run_id=rid, mlflow_error=err)
        _write_summary(out_dir / "summary.json", summary)
    return Analysis(out_dir, report_md, summary, table_txt, rid, err)


def _json_safe(obj: object) -> object:
    """NaN -> None and numpy scalars -> Python, so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(_json_safe(summary), indent=2, default=str) + "\n")


def _counts_line(c: dict[str, int]) -> str:
    rerun = f" ({c['rerun_jobs']} more re-run and FINISHED)" if c["rerun_jobs"] else ""
    return (
        f"{c['replica_runs']} replica runs in {c['job_runs']} job run(s): {c['duplicates']} "
        f"duplicate(s) of a configuration and seed set aside; of the rest {c['used']} used; "
        f"{c['diverged']} diverged, {c['failed']} failed, {c['killed']} killed, "
        f"{c['unfinished']} unfinished, {c['missing_final_test_acc']} without final_test_acc "
        f"(all excluded from the bootstrap); {c['failed_jobs']} job run(s) failed{rerun}."
    )


def _completeness(study: Study) -> list[str]:
    """The report.md section on skipped runs, duplicates and incomplete sweeps (may be empty)."""
    notes = study.warnings(limit=None)
    if not notes:
        return []
    return ["## Completeness", "", *(f"- {n}" for n in notes), ""]


def _markdown(
    study: Study,
    s: dict,
    table_md: str,
    mres: BootstrapResult,
    sres: BootstrapResult,
    configs: pd.DataFrame,
    figs: dict[str, Path],
    out_dir: Path,
    is_grid: bool,
) -> str:
    prov = s["selection"]
    c = s["counts"]
    conf = f"{mres.confidence:.0%}"
    n, m = mres.n, mres.resample_size
    ratio = mres.mean.width / sres.mean.width if sres.mean.width > 0 else math.nan
    fig = {k: v.relative_to(out_dir).as_posix() for k, v in figs.items()}
    head = s["headline_config"]
    out = [
        f"# Reproduction report: {s['name']}",
        "",
        f"Study `{s['study']}`; {_counts_line(c)}",
        "",
        *_completeness(study),
        f"Headline configuration ({s['headline_reason']}): lr {head['lr']:g}, batch size "
        f"{head['batch_size']}, activations {head['activations']}; {n} usable runs.",
        "Values are each run's final test accuracy, a fraction of the n_test = "
        f"{s['n_test']} test points, shown in percent; std in percentage points (pp).",
        "",
        "## This study vs the report",
        "",
        table_md,
        "",
        f"- Report's method: {mres.n_resamples:,} resamples of m = {m} drawn with replacement "
        f"from the n = {n} values, percentile {conf} interval, std with ddof=1 in each resample "
        f"(numpy, seed {mres.seed}, {mres.seconds:.2f} s).",
        f"- Standard method: scipy.stats.bootstrap, {sres.method}, {sres.n_resamples:,} "
        f"resamples of n = {n} (n out of n), std with ddof=1 (seed {sres.seed}, "
        f"{sres.seconds:.2f} s).",
    ]
    for res in (mres, sres):
        if res.note:
            out.append(f"- Note ({res.method}): {res.note}.")
    if m != REPORT["resample_size"]:
        out.append(
            f"- m = {m} here, not the report's {REPORT['resample_size']}"
            + (f" (only {n} usable runs)." if n < REPORT["resample_size"] else ".")
        )
    out += [
        "",
        "### m out of n",
        "",
        f"A resample of m values from n has a mean with variance s^2/m rather than s^2/n, so "
        f"the m-out-of-n interval for the mean is about sqrt(n/m) = sqrt({n}/{m}) = "
        f"{math.sqrt(n / m):.3f} times the n-out-of-n one (here the measured width ratio to "
        f"{sres.method} is {ratio:.3f}). With m < n it describes the mean of {m} runs, not of "
        f"the {n} we have, so it is wider (more conservative); with m > n it would be "
        "narrower than the data support. Its std interval is the spread of the std of "
        f"size-{m} resamples (ddof=1), which is the report's quantity, not an interval for the "
        "population std; it too widens as m shrinks.",
        "",
        "### The report's interval for the mean is too narrow",
        "",
        f"The report's {conf} interval for the mean, [{REPORT['mean'][0]}, {REPORT['mean'][1]}] "
        f"%, has half-width {(REPORT['mean'][1] - REPORT['mean'][0]) / 2:.3f} pp. A normal-"
        "theory interval, which any bootstrap of the mean approaches at this n, would be:",
        "",
        _width_note(mres, float(np.std(s["final_test_acc"], ddof=1)), n),
        "",
        "So no resampling of 110 runs with that spread gives the published width; the "
        "published interval cannot be the interval of the mean over runs as described.",
        "",
        "## Figures",
        "",
    ]
    captions = {
        "fig1_loss": "Figure 1: train/test loss against epoch, one run and the mean over runs",
        "fig2_accuracy": "Figure 2: train/test accuracy against epoch, one run and the mean",
        "bootstrap": "Bootstrap distributions of the mean and the std, intervals marked",
        "grid_ranked": "Configurations ranked by mean test accuracy with intervals",
        "grid_heatmap": "Learning rate x batch size per activation combination",
        "grid_accuracy_vs_epochs": "Test accuracy against epochs per configuration",
    }
    for key, path in fig.items():
        out += [f"![{captions.get(key, key)}]({path})", f"*{captions.get(key, key)}.*", ""]
    if "fig1_loss" not in fig:
        out += ["(No curves found for the headline runs: Figures 1 and 2 are missing.)", ""]
    if is_grid:
        out += [
            "## Grid search",
            "",
            f"Intervals: {sres.method} over each configuration's usable runs, {conf}.",
            "",
            "Failed: replica runs not FINISHED, or 1 for a job run that failed before any replica.",
            "",
            "| rank | lr | batch | activations | runs used/total | diverged | failed | "
            f"mean (%) | {conf} CI |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(configs.itertuples(), 1):
            ci = _fmt_iv(r.low, r.high) if not math.isnan(r.low) else "n/a"
            mean = f"{r.mean * 100:.2f}" if not math.isnan(r.mean) else "n/a"
            out.append(
                f"| {i} | {r.lr:g} | {r.batch_size} | {r.activations} | {r.n_used}/{r.n_runs} "
                f"| {r.n_diverged} | {r.n_failed + int(r.failed_job)} | {mean} | {ci} |"
            )
        out.append("")
    failed = study.jobs[study.jobs["status"] != "FINISHED"] if len(study.jobs) else study.jobs
    if len(failed):
        out += ["## Failed job runs", ""]
        done = set(study.jobs.loc[study.jobs["status"] == "FINISHED", "config_hash"]) - {""}
        out += [
            f"- `{j.run_id}` {j.status}: {j.error or '(no mtl.error)'}"
            + (" (its configuration was re-run and FINISHED)" if j.config_hash in done else "")
            for j in failed.itertuples()
        ]
        out.append("")
    out += [
        "## Provenance",
        "",
        f"- Tracking URI: `{prov['tracking_uri']}`",
        f"- Selected run(s): {', '.join(f'`{r}` ({k}, {st})' for r, k, st in zip(prov['top_run_ids'], prov['top_run_kinds'], prov['top_run_statuses'], strict=True))}",  # noqa: E501
        f"- Command that produced the runs: {', '.join(f'`{x}`' for x in prov['commands']) or 'unknown'}",  # noqa: E501
        f"- Git commit of the runs: {', '.join(f'`{x}`' for x in prov['git_commits'])}"
        + (f" (dirty: {', '.join(prov['git_dirty'])})" if prov["git_dirty"] else ""),
        f"- Analysis: `{s['analysis']['command']}` at commit `{s['analysis']['git_commit']}`, "
        f"{s['analysis']['created']}",
        f"- Curves read from {s['curves']['source'] or 'nowhere'} in {s['curves']['seconds']} s"
        + (f"; missing for {len(s['curves']['missing'])} run(s)" if s["curves"]["missing"] else ""),
        "",
    ]
    return "\n".join(out)
