"""``python -m experiments.sync [PATH ...] [--tracking-uri URI]`` (also ``minitorch-sync``).

Uploads every job bundle under the given folders (default: all of ``runs/``) that the store
does not hold complete yet: one FINISHED job run with all its replica runs and full curves,
never a duplicate, however often it is run. Prints a line per bundle: uploaded, already there,
not trained to the end (re-run its command to resume), or busy (its job is uploading it now).
Exit status: 0 when every bundle is in the store or cannot be (untrained), 2 for bad input,
3 when the store cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.errors import StoreUnavailable
from experiments.record_format import Tag

EXIT_USAGE, EXIT_STORE = 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sync",
        description="Fill the MLflow store from job bundles (results kept on disk by each job).",
    )
    p.add_argument("paths", nargs="*", type=Path, help="bundles or folders holding them (runs/)")
    p.add_argument(
        "--tracking-uri",
        help="store to fill (default: the one each bundle was made for)",
    )
    p.add_argument("--retry-s", type=float, default=60.0, help="wait out a failing store (60)")
    return p


def _sync_one(path: Path, uri: str | None, retry_s: float, trackers: dict) -> str:
    """Upload one bundle; returns the line to print."""
    from experiments.bundle import Bundle
    from experiments.reaper import process_gone
    from experiments.tracking import Tracker
    from experiments.upload import upload

    bundle = Bundle.open(path)
    m = bundle.manifest
    if bundle.state == "training":
        alive = process_gone(m["process"], None, 0) is None
        what = "still training" if alive else "not trained to the end"
        return f"{what}: {bundle.path} (re-run `{m['tags'].get(Tag.COMMAND, '?')}` to resume)"
    target = uri or m["tracking_uri"]
    key = (target, m["experiment"])
    if key not in trackers:
        trackers[key] = Tracker(target, m["experiment"], retry_s)
    with bundle.locked(wait=False) as mine:
        if not mine:
            return f"busy: {bundle.path} (its job or another sync is uploading it)"
        report = upload(bundle, trackers[key])
    verb = "uploaded" if report.run_ids else "already there"
    return f"{verb}: {bundle.path} -> {target} ({report.summary()})"


def sync(paths: Sequence[Path], uri: str | None = None, retry_s: float = 60.0) -> list[str]:
    """Upload the bundles under `paths`; returns one line per bundle (also printed)."""
    from experiments.bundle import BundleError, find_bundles
    from experiments.provenance import repo_root
    from experiments.reaper import reap
    from experiments.tracking import resolve_uri

    roots = list(paths) or [repo_root() / "runs"]
    missing = [str(p) for p in roots if not Path(p).exists()]
    if missing:
        raise BundleError(f"no such file or folder: {', '.join(missing)}")
    uri = resolve_uri(uri) if uri else None
    trackers: dict = {}
    lines = []
    for path in find_bundles(roots):
        try:
            line = _sync_one(path, uri, retry_s, trackers)
        except BundleError as exc:
            line = f"skipped: {exc}"
        print(line, flush=True)
        lines.append(line)
    for tracker in trackers.values():
        for run_id, status in reap(tracker, say=lambda s: None):
            print(f"ended run {run_id} {status} (its process is gone)", flush=True)
    if not lines:
        print(f"no bundles under {', '.join(str(r) for r in roots)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from experiments.bundle import BundleError
    from experiments.config import ConfigError

    try:
        sync(args.paths, args.tracking_uri, args.retry_s)
    except (BundleError, ConfigError) as exc:
        print(f"minitorch-sync: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(
            f"minitorch-sync: error: {exc}. Nothing was lost: the bundles stay on disk; run the "
            "sync again when the store is back.",
            file=sys.stderr,
        )
        return EXIT_STORE
    return 0


if __name__ == "__main__":
    sys.exit(main())
