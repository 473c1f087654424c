"""report.md: templates/report.md filled from the numbers of one analysis.

The report's prose lives in the template; here are only the values it names and the parts
whose length depends on the study (notes, figures, the grid table, failed jobs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.bootstrap import BootstrapResult, normal_half_width
from analysis.collect import Study
from analysis.output import counts_line, fill_template, fmt_iv
from analysis.published import REPORT, report_std_midpoint

CAPTIONS = {
    "fig1_loss": "Figure 1: train/test loss ({loss}) against epoch, one run and the mean over runs",
    "fig2_accuracy": "Figure 2: train/test accuracy against epoch, one run and the mean",
    "bootstrap": "Bootstrap distributions of the mean and the std, intervals marked",
    "grid_ranked": "Configurations ranked by mean test accuracy with intervals",
    "grid_heatmap": "Learning rate x batch size per activation combination",
    "grid_accuracy_vs_epochs": "Test accuracy against epochs per configuration",
}


@dataclass
class ReportInputs:
    """What report.md is written from: the study, summary.json's dict and the computed parts."""

    study: Study
    summary: dict
    table_md: str  # "this study vs the report"
    mres: BootstrapResult  # the report's method, on the headline runs
    sres: BootstrapResult  # the standard bootstrap, on the same runs
    configs: pd.DataFrame  # config_table()
    figures: dict[str, str]  # stem -> path relative to the report folder


def render(inp: ReportInputs) -> str:
    """report.md's text: the template with every placeholder filled."""
    values = {
        **_headline(inp),
        **_methods(inp.mres, inp.sres),
        **_published(inp.mres, inp.summary),
        **_provenance(inp.summary),
        "figures": _figures(inp.figures, inp.summary["loss"]),
        "grid_section": _grid(inp.configs, inp.sres) if len(inp.configs) > 1 else "",
        "failed_jobs": _failed_jobs(inp.study),
    }
    return fill_template("report.md", values)


def _headline(inp: ReportInputs) -> dict[str, object]:
    s, head = inp.summary, inp.summary["headline_config"]
    notes = inp.study.warnings(limit=None)
    return {
        "name": s["name"],
        "study": s["study"],
        "counts_line": counts_line(s["counts"]),
        "completeness": "\n".join(["## Completeness", "", *(f"- {n}" for n in notes)])
        if notes
        else "",
        "headline_reason": s["headline_reason"],
        "lr": f"{head['lr']:g}",
        "batch_size": head["batch_size"],
        "activations": head["activations"],
        "loss": s["loss"],
        "n_test": s["n_test"],
        "table": inp.table_md,
    }


def _methods(mres: BootstrapResult, sres: BootstrapResult) -> dict[str, object]:
    """How both bootstraps were drawn, and what sets this run's m apart from the report's."""
    n, m = mres.n, mres.resample_size
    notes = [f"- Note ({r.method}): {r.note}." for r in (mres, sres) if r.note]
    if m != REPORT["resample_size"]:
        few = f" (only {n} usable runs)." if n < REPORT["resample_size"] else "."
        notes.append(f"- m = {m} here, not the report's {REPORT['resample_size']}{few}")
    ratio = mres.mean.width / sres.mean.width if sres.mean.width > 0 else math.nan
    return {
        "n": n,
        "m": m,
        "conf": f"{mres.confidence:.0%}",
        "m_resamples": f"{mres.n_resamples:,}",
        "m_seed": mres.seed,
        "m_seconds": f"{mres.seconds:.2f}",
        "s_method": sres.method,
        "s_resamples": f"{sres.n_resamples:,}",
        "s_seed": sres.seed,
        "s_seconds": f"{sres.seconds:.2f}",
        "method_notes": "\n".join(notes),
        "sqrt_n_over_m": f"{math.sqrt(n / m):.3f}",
        "width_ratio": f"{ratio:.3f}",
    }


def _published(mres: BootstrapResult, summary: dict) -> dict[str, object]:
    """The report's mean interval set against what its own runs and std allow."""
    low, high = REPORT["mean"]
    ours_std = float(np.std(summary["final_test_acc"], ddof=1))
    return {
        "report_conf": f"{REPORT['confidence']:.0%}",
        "report_low": low,
        "report_high": high,
        "report_half": f"{(high - low) / 2:.3f}",
        "report_runs": REPORT["runs"],
        "width_note": width_note(mres, ours_std),
    }


def width_note(ours_m: BootstrapResult, ours_std: float) -> str:
    """The report's mean interval against what its runs with its std allow, computed: at the
    lower end of its std interval (the narrowest it allows) and at its middle."""
    conf, runs, m_report = REPORT["confidence"], REPORT["runs"], REPORT["resample_size"]
    z = normal_half_width(1.0, 1, conf)
    half_report = (REPORT["mean"][1] - REPORT["mean"][0]) / 2
    lines = []
    for s, what in ((REPORT["std"][0], "lower end"), (report_std_midpoint(), "middle")):
        h = normal_half_width(s, runs, conf)
        lines.append(
            f"- with std {s:.2f} pp (the {what} of the report's std interval) over {runs} runs: "
            f"{z:.3f} x {s:.2f} / sqrt({runs}) = {h:.3f} pp half-width; the report's half-width "
            f"is {half_report:.3f} pp, {h / half_report:.1f}x narrower."
        )
    h_m = normal_half_width(REPORT["std"][0], m_report, conf)
    lines.append(
        f"- for resamples of {m_report} (the report's m): {z:.3f} x {REPORT['std'][0]:.2f} / "
        f"sqrt({m_report}) = {h_m:.3f} pp, wider still."
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


def _figures(figs: dict[str, str], loss: str) -> str:
    """Each figure with its caption; a line saying so when the curves are missing."""
    out = []
    for key, path in figs.items():
        caption = CAPTIONS.get(key, key).format(loss=loss)
        out += [f"![{caption}]({path})", f"*{caption}.*", ""]
    if "fig1_loss" not in figs:
        out.append("(No curves found for the headline runs: Figures 1 and 2 are missing.)")
    return "\n".join(out)


def _grid(configs: pd.DataFrame, sres: BootstrapResult) -> str:
    """The grid table: every configuration ranked, with its counts and interval."""
    conf = f"{sres.confidence:.0%}"
    out = [
        "## Grid search",
        "",
        f"Intervals: {sres.method} over each configuration's usable runs, {conf}.",
        "",
        "Failed: replica runs not FINISHED, or 1 for a job run that failed before any replica.",
        "",
        f"| rank | lr | batch | activations | runs used/total | diverged | failed | mean (%) | "
        f"{conf} CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(configs.itertuples(), 1):
        ci = fmt_iv(r.low, r.high) if not math.isnan(r.low) else "n/a"
        mean = f"{r.mean * 100:.2f}" if not math.isnan(r.mean) else "n/a"
        out.append(
            f"| {i} | {r.lr:g} | {r.batch_size} | {r.activations} | {r.n_used}/{r.n_runs} "
            f"| {r.n_diverged} | {r.n_failed + int(r.failed_job)} | {mean} | {ci} |"
        )
    return "\n".join(out)


def _failed_jobs(study: Study) -> str:
    """Job runs that did not finish, with their error and whether a re-run replaced them."""
    jobs = study.jobs
    failed = jobs[jobs["status"] != "FINISHED"] if len(jobs) else jobs
    if not len(failed):
        return ""
    done = set(jobs.loc[jobs["status"] == "FINISHED", "config_hash"]) - {""}
    return "\n".join(
        ["## Failed job runs", ""]
        + [
            f"- `{j.run_id}` {j.status}: {j.error or '(no mtl.error)'}"
            + (" (its configuration was re-run and FINISHED)" if j.config_hash in done else "")
            for j in failed.itertuples()
        ]
    )


def _provenance(s: dict) -> dict[str, object]:
    """Where the runs came from and which code and command analysed them."""
    prov, curves, analysis = s["selection"], s["curves"], s["analysis"]
    selected = zip(
        prov["top_run_ids"], prov["top_run_kinds"], prov["top_run_statuses"], strict=True
    )
    dirty = f" (dirty: {', '.join(prov['git_dirty'])})" if prov["git_dirty"] else ""
    missing = curves["missing"]
    return {
        "tracking_uri": prov["tracking_uri"],
        "selected_runs": ", ".join(f"`{r}` ({k}, {st})" for r, k, st in selected),
        "commands": ", ".join(f"`{x}`" for x in prov["commands"]) or "unknown",
        "git_commits": ", ".join(f"`{x}`" for x in prov["git_commits"]) + dirty,
        "analysis_command": analysis["command"],
        "analysis_commit": analysis["git_commit"],
        "created": analysis["created"],
        "curves_source": curves["source"] or "nowhere",
        "curves_seconds": curves["seconds"],
        "curves_missing": f"; missing for {len(missing)} run(s)" if missing else "",
    }
