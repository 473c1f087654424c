"""What a study's report and a comparison share: options, the output folder, number formats,
tables, summary.json, and the analysis run that logs the files back to MLflow.

report.py and compare.py both end the same way (write summary.json, log the folder as an
analysis run, say why not if the store refuses it), so that ending lives here once.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis.bootstrap import MAX_GRID_RESAMPLES, MAX_RESAMPLES, check_resample_count
from analysis.errors import AnalysisError
from analysis.published import REPORT
from analysis.store import repo_root, store_error, store_errors

TEMPLATES = Path(__file__).with_name("templates")


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


def say(opts: Options, msg: str) -> None:
    """Progress on stderr, unless -q."""
    if opts.verbose:
        print(msg, file=sys.stderr, flush=True)


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


def count(k: int) -> str:
    """10^6 rather than 1000000 when k is a power of ten."""
    e = math.log10(k) if k > 0 else 0.5
    return f"10^{int(e)}" if e.is_integer() and k >= 1000 else f"{k:,}"


def fmt_iv(low: float, high: float, scale: float = 100.0) -> str:
    """An interval of fractions as "[low, high]" in percent (scale 1.0: already in percent)."""
    return f"[{low * scale:.2f}, {high * scale:.2f}]"


def counts_line(c: dict[str, int]) -> str:
    """One sentence with every run count of Study.counts(): nothing left out unsaid."""
    rerun = f" ({c['rerun_jobs']} more re-run and FINISHED)" if c["rerun_jobs"] else ""
    return (
        f"{c['replica_runs']} replica runs in {c['job_runs']} job run(s): {c['duplicates']} "
        f"duplicate(s) of a configuration and seed set aside; of the rest {c['used']} used; "
        f"{c['diverged']} diverged, {c['failed']} failed, {c['killed']} killed, "
        f"{c['unfinished']} unfinished, {c['missing_final_test_acc']} without final_test_acc "
        f"(all excluded from the bootstrap); {c['failed_jobs']} job run(s) failed{rerun}."
    )


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


def fill_template(name: str, values: dict[str, object]) -> str:
    """templates/<name> with every $placeholder filled (a missing one raises KeyError).

    A section left empty would leave a run of blank lines; Markdown needs one, so runs of
    blank lines become one.
    """
    text = Template((TEMPLATES / name).read_text()).substitute(values)
    return re.sub(r"\n{3,}", "\n\n", text)


def published() -> dict[str, object]:
    """The report's numbers as summary.json holds them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in REPORT.items()}


def analysis_info(opts: Options, git_commit: str) -> dict[str, object]:
    """summary.json's "analysis": which code, which command, when."""
    return {
        "git_commit": git_commit,
        "command": opts.command,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


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


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, strict JSON (NaN written as null)."""
    path.write_text(json.dumps(_json_safe(summary), indent=2, default=str) + "\n")


def log_analysis_run(
    client: MlflowClient,
    experiment_id: str,
    tags: dict[str, str],
    run_name: str,
    out_dir: Path,
    metrics: Iterable[Metric] = (),
    params: Iterable[Param] = (),
) -> str:
    """One analysis run holding the folder's files; ended FAILED if logging breaks off."""
    rid = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
    try:
        metrics, params = list(metrics), list(params)
        if metrics or params:
            client.log_batch(rid, metrics=metrics, params=params)
        client.log_artifacts(rid, str(out_dir))
    except Exception:
        with contextlib.suppress(*store_errors()):
            client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED")
    return rid


def finish(
    out_dir: Path,
    summary: dict,
    opts: Options,
    *,
    tracking_uri: str,
    log: Callable[[], str],
    what: str,
) -> tuple[str | None, str | None]:
    """Write summary.json, then (unless --no-mlflow) log the folder with ``log()`` and record
    the run id in summary.json. Returns (run id, None), or (None, one paragraph) when the store
    refuses the run: the files are complete without it."""
    write_summary(out_dir / "summary.json", summary)
    if not opts.log_to_mlflow:
        return None, None
    say(opts, f"logging the {what} to MLflow as an analysis run ...")
    rid = err = None
    try:
        rid = log()
    except store_errors() as e:
        err = (
            f"the {what} was written to {out_dir}, but "
            f"{store_error(tracking_uri, e, 'logging the analysis run')} Re-run with --no-mlflow "
            f"to skip logging the analysis run; the {what} files are complete without it."
        )
    summary["analysis"].update(mlflow_run_id=rid, mlflow_error=err)
    write_summary(out_dir / "summary.json", summary)
    return rid, err
