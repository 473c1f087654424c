"""Compare studies side by side: one row per configuration, each against the exact study.

Every configuration's final test accuracies are bootstrapped by the report's method (m out of
n, percentile) and the standard one (n out of n, BCa by default). Each row's difference to the
baseline (the first configuration trained with ``model.tanh_grad=exact``, else the first given)
gets its own interval: paired by seed when both have the same seeds (replica r of both studies
shares its data, init and shuffle, so pairing removes that shared noise), else the two samples
are resampled independently. report.md explains, from these numbers, which configuration moves
the mean into the report's interval.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from analysis import figures
from analysis.bootstrap import (
    BootstrapResult,
    m_out_of_n_bootstrap,
    scipy_bootstrap,
    scipy_interval,
)
from analysis.collect import Study, load_study, select_top_runs
from analysis.errors import AnalysisError
from analysis.output import (
    Analysis,
    Options,
    analysis_info,
    check_options,
    count,
    counts_line,
    fill_template,
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
from analysis.published import REPORT
from analysis.store import resolve_tracking_uri, store_error, store_errors
from experiments.provenance import environment, git_state
from experiments.record_format import VERSION, Kind, Tag

RUN_ID = re.compile(r"[0-9a-f]{32}")
# Params that say where and how fast a run went, not what it trained: never a "difference".
NOT_TRAINING = ("tracking.", "trainer.threads", "trainer.workers", "trainer.progress",
                "trainer.checkpoint_", "replicas")  # fmt: skip
TANH_GRAD = "model.tanh_grad"


@dataclass
class Row:
    """One configuration of one study, its bootstraps and its difference to the baseline."""

    study: str
    run_id: str  # the study's top-level run
    params: dict[str, object]  # training params (seed and NOT_TRAINING left out)
    values: np.ndarray  # final test accuracies, in seed order
    seeds: list[int]
    report_method: BootstrapResult
    standard: BootstrapResult
    label: str = ""
    differs: dict[str, tuple[object, object]] = field(default_factory=dict)  # key: (ours, base)
    diff: dict[str, object] = field(default_factory=dict)  # estimate, low, high, pairing, n
    diff_distribution: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def tanh_grad(self) -> str:
        """The Tanh derivative it trained with (runs logged before the option: exact)."""
        return str(self.params.get(TANH_GRAD, "exact"))


def select_studies(
    tracking_uri: str | None,
    items: list[str],
    *,
    experiment: str | None,
    tags: dict[str, str],
    verbose: bool,
) -> list[Study]:
    """One Study per compared item: a sweep or job run id, or a study name (its latest FINISHED
    top-level run, within ``experiment`` if given, else within the experiment of that name if
    there is one, else anywhere). No items: every FINISHED top-level run
    matching ``experiment`` / ``tags``."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        if items:
            picked = [_pick_item(client, item, experiment, tags) for item in items]
        else:
            picked = _pick_all(client, experiment, tags)
    except store_errors() as e:
        raise store_error(uri, e, "selecting the studies to compare") from None
    _check_picked([rid for rid, _ in picked], items)
    studies = []
    for rid, skipped in picked:
        study = load_study(uri, run_id=rid, curves=None, verbose=verbose)
        study.skipped = skipped
        studies.append(study)
    return studies


def _pick_item(
    client: MlflowClient, item: str, experiment: str | None, tags: dict[str, str]
) -> tuple[str, list]:
    """(run id, skipped runs) of one --compare item: a run id as it is, or a study's latest."""
    if RUN_ID.fullmatch(item):
        return item, []
    # A study's runs log to the experiment of its name; other experiments may hold runs
    # tagged with the same study (an lr check of the report preset, say).
    exp = experiment
    if exp is None and client.get_experiment_by_name(item) is not None:
        exp = item
    try:
        top, skipped = select_top_runs(client, experiment=exp, tags={**tags, Tag.STUDY: item})
    except AnalysisError as e:
        raise AnalysisError(
            f"--compare {item!r} is neither a 32-hex run id nor a study with a FINISHED run: {e}"
        ) from None
    return top[0].info.run_id, skipped


def _pick_all(
    client: MlflowClient, experiment: str | None, tags: dict[str, str]
) -> list[tuple[str, list]]:
    """(run id, skipped runs) of every FINISHED study matching --experiment / --tag."""
    if experiment is None and not tags:
        raise AnalysisError(
            "--compare without studies needs --experiment NAME and/or --tag KEY=VALUE "
            "to say which FINISHED studies to compare; or name them: --compare report "
            "report_faithful (study names or sweep/job run ids)."
        )
    top, skipped = select_top_runs(client, experiment=experiment, tags=tags, all_runs=True)
    return [(r.info.run_id, skipped if i == 0 else []) for i, r in enumerate(top)]


def _check_picked(ids: list[str], items: list[str]) -> None:
    """Refuse a selection that names a run twice or holds fewer than two studies."""
    repeated = sorted({r for r in ids if ids.count(r) > 1})
    if repeated:
        raise AnalysisError(
            f"--compare selects run {repeated[0]} more than once (items: {' '.join(items)}); "
            "give each study once."
        )
    if len(ids) < 2:
        what = f"items: {' '.join(items)}" if items else "the --experiment/--tag filter"
        raise AnalysisError(
            f"--compare needs at least two studies to compare; {what} selected "
            f"{len(ids)} ({', '.join(ids) or 'none'}). Name two or more, e.g. "
            "`--compare report report_faithful` (study names or sweep/job run ids), or use "
            "--experiment NAME holding two or more FINISHED studies."
        )


def _training_params(runs) -> dict[str, object]:
    first = runs.iloc[0]
    out = {}
    for col in runs.columns:
        key = col.removeprefix("params.")
        if not col.startswith("params.") or key == "seed" or key.startswith(NOT_TRAINING):
            continue
        value = first[col]
        if not (isinstance(value, float) and math.isnan(value)):
            out[key] = value
    return out


def _rows_of(study: Study, opts: Options) -> list[Row]:
    """One Row per configuration (mtl.config_hash) of the study's usable replica runs."""
    usable = study.usable
    if len(usable) == 0:
        raise AnalysisError(
            f"study {study.study_name} ({study.top_runs[0].info.run_id}) has no usable replica "
            f"runs ({study.counts()}): nothing to compare. Choose FINISHED studies."
        )
    rows = []
    for _, g in usable.groupby("config_hash", sort=False):
        g = g.sort_values("seed")
        top = study.top_runs[0].info.run_id
        label = f"{study.study_name} ({top[:8]})"
        if len(g) < 2:
            raise AnalysisError(
                f"{label} has {len(g)} usable run(s) in configuration {g['config_hash'].iloc[0]}"
                "; a bootstrap needs at least 2. Compare studies with replicas >= 2."
            )
        values = g["final_test_acc"].to_numpy(dtype=float)
        m = resample_size(opts, len(values), label)
        kw = dict(n_resamples=opts.n_resamples, confidence=opts.confidence, seed=opts.seed)
        rows.append(
            Row(
                study=study.study_name,
                run_id=top,
                params=_training_params(g),
                values=values,
                seeds=[int(s) for s in g["seed"]],
                report_method=m_out_of_n_bootstrap(values, resample_size=m, **kw),
                standard=scipy_bootstrap(values, method=opts.method, **kw),
                label=label,
            )
        )
    if len(rows) > 1:  # a sweep: tell its configurations apart by what varies inside it
        varying = [k for k in rows[0].params if len({str(r.params.get(k)) for r in rows}) > 1]
        for r in rows:
            r.label += " " + ", ".join(f"{k}={r.params.get(k)}" for k in varying)
    return rows


def _difference(row: Row, base: Row, opts: Options) -> None:
    """Fill row.diff: mean(row) - mean(base) with a bootstrap interval, paired when possible."""
    a, b = row.values, base.values
    paired = row.seeds == base.seeds and len(set(row.seeds)) == len(row.seeds)
    conf = opts.confidence
    if paired:
        d = a - b
        res = scipy_bootstrap(
            d, n_resamples=opts.n_resamples, confidence=conf, method=opts.method, seed=opts.seed
        )
        est, low, high, dist = res.mean.estimate, res.mean.low, res.mean.high, res.mean.distribution
        how, note = f"paired by seed ({len(d)} pairs)", res.note
    else:

        def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)

        est = float(a.mean() - b.mean())
        low, high, dist, fell_back = scipy_interval(
            (a, b), stat, n_resamples=opts.n_resamples, confidence=conf, method=opts.method,
            seed=opts.seed,
        )  # fmt: skip
        note = f"{opts.method} undefined, percentile interval used" if fell_back else ""
        how = f"independent ({len(a)} and {len(b)} runs resampled separately)"
    row.diff = dict(
        estimate=est, low=low, high=high, pairing=how, method=opts.method, note=note,
        n_resamples=opts.n_resamples, confidence=conf,
    )  # fmt: skip
    row.diff_distribution = dist


def build_rows(studies: list[Study], opts: Options) -> tuple[list[Row], Row]:
    """All rows, each with its difference to the baseline row (returned second)."""
    rows = [r for s in studies for r in _rows_of(s, opts)]
    base = next((r for r in rows if r.tanh_grad == "exact"), rows[0])
    for r in rows:
        keys = sorted(set(r.params) | set(base.params))
        r.differs = {
            k: (r.params.get(k, "(unset)"), base.params.get(k, "(unset)"))
            for k in keys
            if str(r.params.get(k, "(unset)")) != str(base.params.get(k, "(unset)"))
        }
        if r is base:
            r.diff = dict(estimate=0.0, low=0.0, high=0.0, pairing="baseline", method="")
        else:
            _difference(r, base, opts)
    return rows, base


def _differs_text(r: Row, base: Row) -> str:
    if r is base:
        return "baseline (exact)" if r.tanh_grad == "exact" else "baseline (first given)"
    return ", ".join(f"{k}={v}" for k, (v, _) in r.differs.items()) or "(same params)"


def table_rows(rows: list[Row], base: Row) -> tuple[list[dict[str, str]], list[str]]:
    """The comparison table (percent, percentage points), the report's row last."""
    out = []
    for r in rows:
        rm, st, d = r.report_method, r.standard, r.diff
        out.append(
            {
                "configuration": r.label,
                "differs from baseline": _differs_text(r, base),
                "n": str(rm.n),
                "mean (%)": f"{rm.mean.estimate * 100:.2f}",
                "mean CI, report method": fmt_iv(rm.mean.low, rm.mean.high),
                f"mean CI, {st.method}": fmt_iv(st.mean.low, st.mean.high),
                "std (pp)": f"{rm.std.estimate * 100:.2f}",
                "std CI, report method": fmt_iv(rm.std.low, rm.std.high),
                f"std CI, {st.method}": fmt_iv(st.std.low, st.std.high),
                "diff (pp)": "0" if r is base else f"{d['estimate'] * 100:+.2f}",
                "diff CI": "baseline" if r is base else fmt_iv(d["low"], d["high"]),
            }
        )
    method = rows[0].standard.method
    lo, hi = REPORT["mean"]
    gap = (lo + hi) / 2 - base.standard.mean.estimate * 100
    out.append(
        {
            "configuration": "report (published)",
            "differs from baseline": "its training",
            "n": str(REPORT["runs"]),
            "mean (%)": "n/a",
            "mean CI, report method": f"[{lo:.2f}, {hi:.2f}]",
            f"mean CI, {method}": "n/a",
            "std (pp)": "n/a",
            "std CI, report method": f"[{REPORT['std'][0]:.2f}, {REPORT['std'][1]:.2f}]",
            f"std CI, {method}": "n/a",
            "diff (pp)": f"{gap:+.2f} (midpoint)",
            "diff CI": fmt_iv(lo - base.standard.mean.estimate * 100,
                               hi - base.standard.mean.estimate * 100, scale=1.0) + " shifted",
        }
    )  # fmt: skip
    return out, list(out[0])


def _verdict(r: Row) -> tuple[bool, str]:
    """(mean inside the report's interval?, one sentence on the row against that interval)."""
    lo, hi = REPORT["mean"]
    mean = r.standard.mean.estimate * 100
    low, high = r.standard.mean.low * 100, r.standard.mean.high * 100
    inside = lo <= mean <= hi
    overlap = low <= hi and high >= lo
    where = "inside" if inside else ("below" if mean < lo else "above")
    return inside, (
        f"its mean {mean:.2f} % is {where} the report's [{lo:.2f}, {hi:.2f}]"
        + (
            ""
            if inside
            else f" ({lo - mean:+.2f} pp to its lower end)"
            if mean < lo
            else f" ({mean - hi:+.2f} pp past its upper end)"
        )
        + f"; its {r.standard.confidence:.0%} interval [{low:.2f}, {high:.2f}] "
        + ("overlaps the report's" if overlap else "does not reach the report's")
    )


def why_section(rows: list[Row], base: Row) -> list[str]:
    """report.md's "Why our mean differs from the report's", written from the numbers."""
    lo, hi = REPORT["mean"]
    bm = base.standard.mean.estimate * 100
    conf = f"{base.standard.confidence:.0%}"
    out = [
        "## Why our mean differs from the report's",
        "",
        f"Baseline: {base.label}, trained with {TANH_GRAD}={base.tanh_grad}, mean {bm:.2f} %. "
        "The report's "
        f"{conf} interval [{lo:.2f}, {hi:.2f}] lies {lo - bm:+.2f} to {hi - bm:+.2f} pp from it.",
        "Each configuration below differs from the baseline by the params named; its effect is "
        f"its mean minus the baseline's, with a {conf} {base.standard.method} bootstrap "
        "interval.",
        "",
    ]
    movers = []
    others = [r for r in rows if r is not base]
    for r in others:
        d = r.diff
        inside, sentence = _verdict(r)
        sig = d["low"] > 0 or d["high"] < 0
        if inside:
            movers.append(r)
        out.append(
            f"- **{_differs_text(r, base)}** ({r.label}): effect {d['estimate'] * 100:+.2f} pp, "
            f"{conf} interval {fmt_iv(d['low'], d['high'])} pp, {d['pairing']}; "
            + ("different from zero" if sig else "not distinguishable from zero")
            + f". Alone it {'brings' if inside else 'does not bring'} the mean into the "
            f"report's interval: {sentence}."
        )
    if not others:
        out.append("- (no configuration other than the baseline)")
    out.append("")
    if movers:
        out.append(
            "Into the report's interval: " + "; ".join(_differs_text(r, base) for r in movers) + "."
        )
    else:
        best = max(others, key=lambda r: r.diff["estimate"], default=None)
        tail = ""
        if best is not None:
            share = best.diff["estimate"] * 100 / (lo - bm) if lo != bm else math.nan
            tail = (
                f" The largest effect, {_differs_text(best, base)}, closes "
                f"{share:.0%} of the distance from the baseline to the report's lower end."
            )
        out.append(
            f"None of these configurations brings the mean into the report's interval.{tail}"
        )
    out.append("")
    return out


def _summary(rows: list[Row], base: Row, studies: list[Study], opts: Options, name: str) -> dict:
    def row_dict(r: Row) -> dict:
        return {
            "label": r.label,
            "study": r.study,
            "run_id": r.run_id,
            "baseline": r is base,
            "differs": {k: {"value": v, "baseline": b} for k, (v, b) in r.differs.items()},
            "params": r.params,
            "n": r.report_method.n,
            "seeds": r.seeds,
            "final_test_acc": [float(v) for v in r.values],
            "report_method": r.report_method.as_dict(),
            "standard": r.standard.as_dict(),
            "diff_to_baseline": r.diff,
            "in_report_interval": _verdict(r)[0],
        }

    return {
        "kind": "comparison",
        "name": name,
        "baseline": base.label,
        "rows": [row_dict(r) for r in rows],
        "report": published(),
        "selection": {
            "tracking_uri": studies[0].tracking_uri,
            "top_run_ids": [s.top_runs[0].info.run_id for s in studies],
            "studies": [s.study_name for s in studies],
        },
        "counts": {s.top_runs[0].info.run_id: s.counts() for s in studies},
        "warnings": [w for s in studies for w in s.warnings(limit=None)],
        "analysis": analysis_info(opts, git_state().commit),
    }


def _out_dir(opts: Options, rows: list[Row]) -> tuple[str, Path]:
    name = opts.name or "compare-" + "-".join(dict.fromkeys(r.run_id[:8] for r in rows))
    return report_dir(name, opts, "comparison")


def _log(studies: list[Study], out_dir: Path, opts: Options, name: str) -> str:
    """Log the comparison's files as an analysis run in the first study's experiment."""
    tags = {
        Tag.FORMAT: VERSION,
        Tag.KIND: Kind.ANALYSIS,
        Tag.STUDY: "comparison",
        Tag.GIT_COMMIT: git_state().commit,
        Tag.COMMAND: opts.command,
        **environment(),  # Python, library versions, CPU (experiments/provenance.py)
        Tag.ANALYSED_RUN_IDS: ",".join(s.top_runs[0].info.run_id for s in studies),
    }
    client = MlflowClient(tracking_uri=studies[0].tracking_uri)
    exp = studies[0].top_runs[0].info.experiment_id
    return log_analysis_run(client, exp, tags, f"analysis-{name}", out_dir)


def _figure(rows: list[Row], base: Row, opts: Options, out_dir: Path) -> Path:
    """The bootstrap distributions of every mean and every difference, saved; the PNG path."""
    fig = figures.comparison_figure(
        [
            (r.label, r.standard.mean.distribution, (r.standard.mean.low, r.standard.mean.high))
            for r in rows
        ],
        [
            (r.label, r.diff_distribution, (r.diff["low"], r.diff["high"]))
            for r in rows
            if r is not base
        ],
        reference=REPORT["mean"],
        baseline_mean=base.standard.mean.estimate,
        method=base.standard.method,
        confidence=opts.confidence,
    )
    return figures.save(fig, out_dir / "figures", "compare_bootstrap")


def _markdown(
    studies: list[Study], rows: list[Row], base: Row, table_md: str, summary: dict, figure: str
) -> str:
    """report.md of the comparison: templates/comparison.md filled from the rows."""
    r0 = rows[0]
    resamples = count(r0.standard.n_resamples)
    ids = [(s.study_name, s.top_runs[0].info.run_id) for s in studies]
    return fill_template(
        "comparison.md",
        {
            "name": summary["name"],
            "studies": ", ".join(f"{name} (`{rid}`)" for name, rid in ids),
            "study_counts": "\n".join(
                f"- {name} (`{rid}`): {counts_line(s.counts())}"
                for (name, rid), s in zip(ids, studies, strict=True)
            ),
            "warnings": "\n".join(f"- warning: {w}" for w in summary["warnings"]),
            "table": table_md,
            "resamples": resamples,
            "m": r0.report_method.resample_size,
            "conf": f"{r0.standard.confidence:.0%}",
            "method": r0.standard.method,
            "pairings": "; ".join(f"{r.label}: {r.diff['pairing']}" for r in rows if r is not base),
            "why": "\n".join(why_section(rows, base)),
            "figure": figure,
        },
    )


def compare(studies: list[Study], opts: Options) -> Analysis:
    """Bootstrap every configuration, difference to the baseline, write the comparison."""
    check_options(opts)
    say(opts, f"comparing {len(studies)} studies ({count(opts.n_resamples)} resamples each)")
    rows, base = build_rows(studies, opts)
    name, out_dir = _out_dir(opts, rows)
    png = _figure(rows, base, opts, out_dir).relative_to(out_dir)
    trows, cols = table_rows(rows, base)
    summary = _summary(rows, base, studies, opts, name)
    summary["figures"] = {"compare_bootstrap": str(png)}
    report_md = out_dir / "report.md"
    md = _markdown(studies, rows, base, render_markdown(trows, cols), summary, png.as_posix())
    report_md.write_text(md)
    rid, err = finish(
        out_dir,
        summary,
        opts,
        tracking_uri=studies[0].tracking_uri,
        log=lambda: _log(studies, out_dir, opts, name),
        what="comparison",
    )
    return Analysis(out_dir, report_md, summary, render_text(trows, cols), rid, err)
