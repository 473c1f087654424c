"""The job bundle: what a job produced, on disk in its output folder before any store sees it.

A job writes its bundle as soon as training ends; the MLflow store is then filled from the
bundle (`experiments.upload`), by the job itself or later by `python -m experiments.sync`.
Format version 1, in ``<job output dir>/bundle/`` (``bundle-1/``, ... for later runs there):

    bundle.json     the manifest: format, version, id, state, where the runs go (tracking URI,
                    experiment, parent sweep), the job run's name, tags and params, the seeds,
                    the run ids once created, the logging timestamp, host and pid of the writer
    config.yaml     the resolved config of the job
    result.npz      seeds [R], eval_epochs [E], train_loss/test_loss/train_acc/test_acc [R, E]
                    (float64), diverged [R] (bool), diverged_epoch [R] (int64)
    weights.pt      final weights {"0.weight": [R, out, in], ...} (torch.save)
    job.json        timings {name: seconds}, the job's score (mean final test accuracy),
                    the kernel that trained it (native or torch; absent in older bundles) and,
                    if it trained together with other jobs, which (trained_with)
    replicas/       one folder per seed with that replica run's artifacts (config.yaml,
                    curves.csv, weights.pt, figures/); derived from the files above, so a
                    missing or partial folder is made again from them

States: ``training`` (manifest written when the job starts), ``trained`` (result.npz,
weights.pt and job.json written: nothing trained is lost from here on), ``uploaded`` (every
run FINISHED in the store). Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "minitorch-lab-bundle"
VERSION = 1
FOLDER = "bundle"
MANIFEST = "bundle.json"
CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")  # the arrays of result.npz
STATES = ("training", "trained", "uploaded")


class BundleError(Exception):
    """A bundle that cannot be read: not a bundle, a newer format, or damaged files."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Bundle:
    """One job's bundle folder and its manifest (kept in memory, rewritten on every change)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def create(cls, output_dir: Path, config_yaml: str, **fields: Any) -> Bundle:
        """A new bundle in ``output_dir/bundle`` in state ``training`` (``bundle-1``, ... when a
        job is run again in the same output folder, e.g. with a fixed hydra.run.dir)."""
        from experiments.reaper import process_tags

        path = Path(output_dir) / FOLDER
        for n in itertools.count(1):
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                path = Path(output_dir) / f"{FOLDER}-{n}"
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "id": uuid.uuid4().hex,
            "state": "training",
            "process": process_tags(),  # host, pid, its start time, boot id (reaper.py)
            "job_run_id": None,
            "replica_run_ids": {},
            **fields,
        }
        bundle = cls(path, manifest)
        write_atomic(path / "config.yaml", config_yaml.encode())
        bundle.save_manifest()
        return bundle

    @classmethod
    def open(cls, path: Path) -> Bundle:
        """Read the bundle at ``path`` (the bundle folder or its manifest)."""
        path = Path(path)
        if path.name == MANIFEST:
            path = path.parent
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path / MANIFEST} cannot be read: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise BundleError(f"{path / MANIFEST} is not a {FORMAT} manifest.")
        if manifest.get("version", 0) > VERSION:
            raise BundleError(
                f"{path} has bundle format version {manifest['version']}; this code reads "
                f"versions up to {VERSION}: update minitorch-lab."
            )
        return cls(path, manifest)

    @property
    def state(self) -> str:
        return str(self.manifest["state"])

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    def save_manifest(self) -> None:
        write_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def update(self, **fields: Any) -> None:
        """Change manifest fields and write it at once."""
        self.manifest.update(fields)
        self.save_manifest()

    def save_result(self, result: Any, timings: dict[str, float], score: float) -> None:
        """Write the trained results (a TrainResult) and move to state ``trained``."""
        import io

        import torch

        arrays = {
            "seeds": np.asarray(result.seeds, dtype=np.int64),
            "eval_epochs": result.eval_epochs.numpy(),
            "diverged": result.diverged.numpy(),
            "diverged_epoch": result.diverged_epoch.numpy(),
        }
        arrays.update({k: getattr(result, k).double().numpy() for k in CURVES})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(self.path / "result.npz", buf.getvalue())
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in result.state.items()}, buf)
        write_atomic(self.path / "weights.pt", buf.getvalue())
        job = {"timings": timings, "score": score, "kernel": result.kernel}
        if result.trained_with:
            job["trained_with"] = result.trained_with
        write_atomic(self.path / "job.json", json.dumps(job, indent=1).encode())
        self.update(state="trained")

    def load_result(self) -> tuple[Any, dict[str, Any]]:
        """(TrainResult, job.json) of a trained bundle."""
        import torch

        from experiments.training import TrainResult

        if self.state == "training":
            raise BundleError(f"{self.path} has no results: its job never finished training.")
        try:
            data = np.load(self.path / "result.npz")
            state = torch.load(self.path / "weights.pt")
            job = json.loads((self.path / "job.json").read_text())
        except (OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.path}: the results cannot be read ({exc}).") from None
        result = TrainResult(
            seeds=[int(s) for s in data["seeds"]],
            eval_epochs=torch.from_numpy(data["eval_epochs"]),
            diverged=torch.from_numpy(data["diverged"]),
            diverged_epoch=torch.from_numpy(data["diverged_epoch"]),
            state=state,
            timings=dict(job.get("timings", {})),
            kernel=str(job.get("kernel", "")),
            trained_with=str(job.get("trained_with", "")),
            **{k: torch.from_numpy(data[k]) for k in CURVES},
        )
        return result, job

    @property
    def replicas_dir(self) -> Path:
        return self.path / "replicas"

    @contextlib.contextmanager
    def locked(self, wait: bool = True):
        """Hold the bundle's lock (one uploader at a time); yields False if busy and not wait."""
        fh = open(self.path / ".lock", "a+")  # noqa: SIM115  (closed below)
        try:
            flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fh, flags)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            fh.close()


def find_bundles(roots: list[Path]) -> list[Path]:
    """Every bundle folder under ``roots`` (a root may itself be a bundle or a job folder)."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if (root / MANIFEST).is_file():
            found.add(root.resolve())
        elif root.is_dir():
            found.update(p.parent.resolve() for p in root.rglob(f"{FOLDER}*/{MANIFEST}"))
    return sorted(found)
