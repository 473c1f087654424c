"""What the selected runs hold beyond their rows: replicas run twice and sweeps that did not finish.

A configuration (tag ``mtl.config_hash``) and seed (``mtl.seed``) counts once: the latest FINISHED
replica run, by end time then start time. A sweep (``mtl.kind=sweep``) plans ``mtl.n_jobs`` jobs
and lists them in its ``sweep_jobs.json`` artifact ({"format": 1, "jobs": [{"num", "overrides",
"config_hash"}, ...]}); it is complete when each planned configuration has a FINISHED job run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from analysis.store import local_artifact
from experiments.record_format import Artifact, Tag

SWEEP_JOBS = Artifact.SWEEP_JOBS
SWEEP_JOBS_FORMAT = 1


def split_duplicates(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, set aside): one replica run per (config_hash, seed), the latest FINISHED one.

    Rows without a config hash or seed cannot be matched and are all kept. Set-aside rows get a
    ``kept_run_id`` column naming the run that counts instead.
    """
    if runs.empty:
        return runs, runs.assign(kept_run_id=pd.Series(dtype=str))
    ranked = runs.assign(
        _finished=runs["status"].eq("FINISHED"),
        _end=pd.to_numeric(runs.get("end_time"), errors="coerce").fillna(-1),
        _start=pd.to_numeric(runs.get("start_time"), errors="coerce").fillna(-1),
    ).sort_values(["_finished", "_end", "_start", "run_id"], ascending=False, kind="stable")
    keyed = ranked["config_hash"].astype(str).ne("") & ranked["seed"].notna()
    key = ranked["config_hash"].astype(str) + "|" + ranked["seed"].astype(str)
    first = ~key.duplicated() | ~keyed
    winner = dict(zip(key[first & keyed], ranked.loc[first & keyed, "run_id"], strict=True))
    helpers = ["_finished", "_end", "_start"]
    kept = ranked[first].drop(columns=helpers)
    kept = kept.sort_values(["config_hash", "seed"], kind="stable").reset_index(drop=True)
    dups = ranked[~first].drop(columns=helpers).reset_index(drop=True)
    dups["kept_run_id"] = [winner[k] for k in key[~first]]
    return kept, dups


@dataclass(frozen=True)
class SweepCheck:
    """Whether one sweep run has a FINISHED job run for every job it planned."""

    run_id: str
    status: str
    planned: int | None  # tag mtl.n_jobs, else the length of sweep_jobs.json; None: unknown
    finished: int  # distinct configurations with a FINISHED job run
    missing: list[str] = field(default_factory=list)  # overrides of planned jobs not FINISHED
    unfinished: list[str] = field(default_factory=list)  # "<overrides> (STATUS)", no re-run
    has_job_list: bool = False  # sweep_jobs.json was read
    note: str = ""  # e.g. why sweep_jobs.json could not be used

    @property
    def complete(self) -> bool:
        """False when the sweep is known to lack a planned job; True otherwise (or unknown)."""
        short = self.planned is not None and self.finished < self.planned
        return not (short or self.missing)

    def describe(self, limit: int | None = None) -> str:
        """One sentence for stderr and report.md, naming at most ``limit`` configurations."""
        head = f"sweep {self.run_id} ({self.status})"
        if self.complete:
            return f"{head}: {self.finished} of {self.planned or '?'} planned job(s) FINISHED."
        planned = self.planned if self.planned is not None else "?"
        text = f"{head} is incomplete: {self.finished} of {planned} planned job(s) FINISHED"
        if self.has_job_list:
            return f"{text}; missing: {_listing(self.missing or ['(none named)'], limit)}."
        text += f"; it has no usable {SWEEP_JOBS} to name the missing configurations"
        if self.note:
            text += f" ({self.note})"
        if self.unfinished:
            text += f"; job runs that did not finish: {_listing(self.unfinished, limit)}"
        return text + "."

    def as_dict(self) -> dict[str, object]:
        """Plain values for summary.json."""
        keys = ("run_id", "status", "planned", "finished", "missing", "unfinished", "note")
        return {**{k: getattr(self, k) for k in keys}, "complete": self.complete}


def _listing(items: list[str], limit: int | None) -> str:
    if limit is None or len(items) <= limit:
        return "; ".join(items)
    return "; ".join(items[:limit]) + f"; and {len(items) - limit} more (see summary.json)"


def read_sweep_jobs(client: MlflowClient, run: Run) -> tuple[list[dict] | None, str]:
    """The ``jobs`` of the sweep's sweep_jobs.json, or (None, why not)."""
    local = local_artifact(run.info.artifact_uri, SWEEP_JOBS)
    try:
        if local is not None:
            text = local.read_text()
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run.info.run_id, SWEEP_JOBS, dst_path=tmp)
                text = Path(path).read_text()
    except (OSError, MlflowException):
        return None, ""  # not logged (older harness): only the counts can be given
    try:
        data = json.loads(text)
        fmt = data.get("format")
        jobs = data["jobs"]
        if fmt != SWEEP_JOBS_FORMAT:
            return None, f"{SWEEP_JOBS} has format {fmt!r}; this analysis reads format 1"
        ok = all(isinstance(j.get("overrides"), list) and j.get("config_hash") for j in jobs)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{SWEEP_JOBS} is malformed ({type(e).__name__}: {e})"
    if not ok:
        return None, f"{SWEEP_JOBS} has a job without overrides or config_hash"
    return jobs, ""


def _planned(run: Run, listed: list[dict] | None) -> int | None:
    try:
        return int(run.data.tags.get(Tag.N_JOBS, ""))
    except ValueError:
        return len(listed) if listed is not None else None


def check_sweep(client: MlflowClient, sweep: Run, jobs: pd.DataFrame) -> SweepCheck:
    """Compare the sweep's plan with its job runs (rows of ``jobs`` under this sweep)."""
    if jobs.empty:
        jobs = pd.DataFrame(columns=["run_id", "status", "config_hash", "overrides"])
    done = jobs[jobs["status"] == "FINISHED"]
    # A job run without a hash cannot be matched to the plan; it still counts as one job.
    done_keys = {h or f"run:{r}" for h, r in zip(done["config_hash"], done["run_id"], strict=True)}
    listed, note = read_sweep_jobs(client, sweep)
    missing = []
    if listed is not None:
        missing = [" ".join(j["overrides"]) for j in listed if j["config_hash"] not in done_keys]
    lost = jobs[(jobs["status"] != "FINISHED") & ~jobs["config_hash"].isin(done_keys)]
    lost = lost.drop_duplicates("config_hash", keep="last")
    unfinished = [
        f"{o or '(no overrides)'} ({s})"
        for o, s in zip(lost["overrides"], lost["status"], strict=True)
    ]
    return SweepCheck(
        run_id=sweep.info.run_id,
        status=sweep.info.status,
        planned=_planned(sweep, listed),
        finished=len(done_keys),
        missing=missing,
        unfinished=unfinished,
        has_job_list=listed is not None,
        note=note,
    )


def job_counts(jobs: pd.DataFrame) -> tuple[int, int]:
    """(failed, re-run): job runs not FINISHED, split by whether their configuration has a
    FINISHED job run in the selection (then it was re-run and nothing is lost)."""
    if jobs.empty:
        return 0, 0
    bad = jobs[jobs["status"] != "FINISHED"]
    done = set(jobs.loc[jobs["status"] == "FINISHED", "config_hash"]) - {""}
    rerun = bad["config_hash"].isin(done)
    return int((~rerun).sum()), int(rerun.sum())
