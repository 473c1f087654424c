"""``python -m analysis`` / ``minitorch-analysis``: bootstrap a study and write its report.

Prints the table "this study vs the report" and the path of report.md on stdout; progress on
stderr. Bad input ends with one paragraph on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.output import Analysis, Options


def _positive_int(text: str) -> int:
    try:
        number = float(text) if "e" in text.lower() else int(text)
        if not float(number).is_integer():
            raise ValueError(text)
        value = int(number)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer (e.g. 1000000 or 1e6)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments; defaults follow the report (10^6 resamples of 100, 99%)."""
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description=(
            "Bootstrap confidence intervals for a study's final test accuracy, figures, and a "
            "report side by side with the published one. Without a selection: the latest FINISHED "
            "run tagged mtl.study=report. Bad input or an unusable store: one paragraph, exit 2."
        ),
    )
    _selection_args(p)
    _bootstrap_args(p)
    _output_args(p)
    return p


def _selection_args(p: argparse.ArgumentParser) -> None:
    """Which study: experiment, run id, tags, --all, --compare, and the store."""
    sel = p.add_argument_group("selection (default: latest FINISHED study, mtl.study=report)")
    sel.add_argument("--experiment", help="MLflow experiment name (report, grid, quick, ...)")
    sel.add_argument(
        "--run-id", help="a sweep or job run id, whatever its status: analyse its replica runs"
    )
    sel.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tag filter, repeatable (e.g. --tag mtl.study=grid)",
    )
    sel.add_argument(
        "--all",
        action="store_true",
        help="use every matching FINISHED study, not only the latest one",
    )
    sel.add_argument(
        "--compare",
        nargs="*",
        metavar="STUDY_OR_RUN_ID",
        help=(
            "compare studies side by side instead: each item a study name (its latest FINISHED "
            "run in --experiment, else in the experiment of that name, else anywhere) or a "
            "sweep/job run id; no items: every FINISHED "
            "study matching --experiment/--tag. One table, the difference of each to the exact "
            "(model.tanh_grad=exact, else first) study, report.md, summary.json, one figure. "
            "E.g. --compare report report_faithful"
        ),
    )
    sel.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/runs/mlflow.db)",
    )


def _bootstrap_args(p: argparse.ArgumentParser) -> None:
    """How to resample: counts, m, confidence, method, seed (defaults: the report's)."""
    bs = p.add_argument_group("bootstrap")
    bs.add_argument(
        "--n-resamples",
        type=_positive_int,
        default=1_000_000,
        help="resamples for both methods, 10^3 to 10^7 (default 10^6, as the report)",
    )
    bs.add_argument(
        "--resample-size",
        type=_positive_int,
        default=None,
        help="m of the report's m-out-of-n method, 2 to n (default 100, or n if fewer runs)",
    )
    bs.add_argument("--confidence", type=float, default=0.99, help="interval level (0.99)")
    bs.add_argument(
        "--method",
        default="BCa",
        choices=["BCa", "percentile", "basic"],
        help="interval of the standard (scipy, n-out-of-n) bootstrap",
    )
    bs.add_argument("--seed", type=int, default=0, help="seed of the resampling (0)")
    bs.add_argument(
        "--grid-resamples",
        type=_positive_int,
        default=10_000,
        help="resamples per configuration when ranking a grid, 10^3 to 10^6 (default 10^4)",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    """Where and what to write: name, folder, curves source, MLflow, progress."""
    out = p.add_argument_group("output")
    out.add_argument("--name", help="report name (default <study>-<run id[:8]>)")
    out.add_argument("--out", type=Path, help="reports directory (default <repo>/runs/reports)")
    out.add_argument(
        "--curves",
        choices=["artifact", "metrics"],
        default="artifact",
        help="read curves from curves.csv artifacts (faster) or step metrics",
    )
    out.add_argument("--no-mlflow", action="store_true", help="do not log the analysis run")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _options(args: argparse.Namespace, argv: list[str]) -> Options:
    from analysis.output import Options

    return Options(
        name=args.name,
        out=args.out,
        n_resamples=args.n_resamples,
        resample_size=args.resample_size,
        confidence=args.confidence,
        method=args.method,
        seed=args.seed,
        grid_resamples=args.grid_resamples,
        log_to_mlflow=not args.no_mlflow,
        verbose=not args.quiet,
        command=shlex.join(["python", "-m", "analysis", *argv]),
    )


def _run(args: argparse.Namespace, argv: list[str]) -> Analysis:
    """Check the settings, read the study, warn about what it lacks, analyse it."""
    from analysis.collect import load_study, parse_tags
    from analysis.output import check_options
    from analysis.report import analyse

    opts = _options(args, argv)
    check_options(opts)  # before the store is read: bad settings fail in a second
    study = load_study(
        args.tracking_uri,
        experiment=args.experiment,
        run_id=args.run_id,
        tags=parse_tags(args.tag),
        all_runs=args.all,
        curves=args.curves,
        verbose=not args.quiet,
    )
    for line in study.warnings():  # printed even with -q: they change what the numbers mean
        print(f"minitorch-analysis: warning: {line}", file=sys.stderr)
    return analyse(study, opts)


def _run_compare(args: argparse.Namespace, argv: list[str]) -> Analysis:
    """Check the settings, read every compared study, compare them."""
    from analysis.collect import parse_tags
    from analysis.compare import compare, select_studies
    from analysis.output import check_options

    if args.run_id or args.all:
        raise AnalysisError(
            "--compare takes its studies as arguments (study names or run ids), not --run-id "
            "or --all: e.g. --compare report report_faithful, or --compare <id1> <id2>, or "
            "--compare --experiment NAME for every FINISHED study in NAME."
        )
    opts = _options(args, argv)
    check_options(opts)
    studies = select_studies(
        args.tracking_uri,
        args.compare,
        experiment=args.experiment,
        tags=parse_tags(args.tag),
        verbose=not args.quiet,
    )
    for study in studies:
        for line in study.warnings():
            print(f"minitorch-analysis: warning: {line}", file=sys.stderr)
    return compare(studies, opts)


def _print_comparison(result: Analysis) -> None:
    s = result.summary
    print(f"\nStudies compared (baseline: {s['baseline']}) and the report:\n")
    print(result.table)
    for row in s["rows"]:
        if not row["baseline"]:
            print(f"diff {row['label']}: {row['diff_to_baseline']['pairing']}")
    if result.analysis_run_id:
        print(f"MLflow analysis run: {result.analysis_run_id}")
    print(f"report: {result.report_md}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input or an unusable store)."""
    args = build_parser().parse_args(argv)
    # Imported here so that --help answers without loading mlflow/scipy/matplotlib (seconds).
    from analysis.store import bounded_store_calls

    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        with bounded_store_calls():
            if args.compare is not None:
                result = _run_compare(args, argv_list)
            else:
                result = _run(args, argv_list)
    except AnalysisError as e:
        print(f"minitorch-analysis: error: {e}", file=sys.stderr)
        return 2
    if args.compare is not None:
        _print_comparison(result)
        if result.mlflow_error:
            print(f"minitorch-analysis: error: {result.mlflow_error}", file=sys.stderr)
            return 2
        return 0
    c = result.summary["counts"]
    s = result.summary
    print(f"\nThis study ({s['study']}; {s['headline']}) vs the report:\n")
    print(result.table)
    print(
        f"\nruns: {c['replica_runs']} replica, {c['duplicates']} duplicate(s) set aside, "
        f"{c['used']} used, {c['diverged']} diverged, "
        f"{c['failed'] + c['killed'] + c['unfinished']} failed/killed/unfinished, "
        f"{c['failed_jobs']} failed job(s)"
        + (f", {c['incomplete_sweeps']} incomplete sweep(s)" if c["incomplete_sweeps"] else "")
    )
    if result.analysis_run_id:
        print(f"MLflow analysis run: {result.analysis_run_id}")
    print(f"report: {result.report_md}")
    if result.mlflow_error:
        print(f"minitorch-analysis: error: {result.mlflow_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
