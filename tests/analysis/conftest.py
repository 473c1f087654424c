"""Build MLflow stores with known runs, in the contract's layout, without the training harness."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from experiments.record_format import (
    CURVE_METRIC,
    DIVERGED_EPOCH,
    DIVERGED_METRIC,
    FINAL,
    VERSION,
    Artifact,
    Kind,
    Tag,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Logged:
    """What the builder logged, so tests can compare the analysis against it."""

    uri: str
    experiment: str
    top_run_id: str  # the sweep run if any, else the job run
    job_run_ids: list[str] = field(default_factory=list)
    replicas: list[dict] = field(default_factory=list)  # one dict per replica run
    config_hashes: list[str] = field(default_factory=list)  # one per config, as tagged


def _config(lr: float, batch_size: int, activations: str, epochs: int, eval_every: int) -> dict:
    return {
        "model.hidden": "[25,25,25]",
        "model.activations": f"[{activations}]",
        "model.init": "torch",
        "model.loss": "mse",
        "optim.lr": lr,
        "data.n_train": 1000,
        "data.n_test": 1000,
        "data.encoding": "onehot",
        "trainer.epochs": epochs,
        "trainer.batch_size": batch_size,
        "trainer.eval_every": eval_every,
    }


def _hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def overrides(lr: float, batch_size: int, activations: str) -> list[str]:
    """A job's overrides as the harness lists them in sweep_jobs.json."""
    acts = f"model.activations=[{activations}]"
    return [f"optim.lr={lr}", f"trainer.batch_size={batch_size}", acts]


def _ms(i: int) -> int:
    return 1_700_000_000_000 + 1000 * i  # distinct, ordered start times


class StoreBuilder:
    """Log studies into one sqlite store: job runs with replicas, optionally under a sweep."""

    def __init__(self, root: Path, template: Path | None = None) -> None:
        self.root = root
        if template is not None:
            shutil.copyfile(template, root / "mlflow.db")
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self._clock = itertools.count()
        self.curves_csv = True

    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(
            name, artifact_location=(self.root / "mlartifacts" / name).as_uri()
        )

    def study(
        self,
        *,
        experiment: str = "report",
        study: str = "report",
        configs: Sequence[tuple[float, int, str]] = ((0.01, 25, "tanh,tanh,tanh"),),
        accuracies: Sequence[Sequence[float]] | None = None,
        seeds: int = 5,
        epochs: int = 40,
        eval_every: int = 10,
        diverged: Sequence[tuple[int, int]] = (),  # (config index, replica index)
        failed_jobs: Sequence[int] = (),  # config indices whose job fails before replicas
        sweep: bool | None = None,
        curves_csv: bool = True,
        job_status: Mapping[int, str] | None = None,  # config index -> KILLED/RUNNING/FAILED
        not_run: Sequence[int] = (),  # config indices planned by the sweep but never started
        sweep_status: str = "FINISHED",  # RUNNING leaves the sweep run open (a crash)
        sweep_jobs_file: bool = True,  # log sweep_jobs.json on the sweep run
        sweep_run_id: str | None = None,  # add the jobs to this sweep (a re-run) instead
        params: Mapping[str, object] | None = None,  # extra config, e.g. model.tanh_grad
    ) -> Logged:
        """Log one study; ``accuracies[c][r]`` is replica r of config c's final test accuracy.

        A job in ``job_status`` logs its replicas and then ends, with them, in that status
        (RUNNING: never ended, as after kill -9).
        """
        exp_id = self.experiment(experiment)
        self.curves_csv = curves_csv
        sweep = len(configs) > 1 or sweep_run_id is not None if sweep is None else sweep
        command = f"python -m experiments.train {'-m ' if sweep else ''}experiment={study}"
        base_tags = {
            Tag.FORMAT: VERSION,
            Tag.STUDY: study,
            Tag.GIT_COMMIT: COMMIT,
            Tag.COMMAND: command,
        }
        rng = np.random.default_rng(len(configs) * 1000 + seeds)
        if accuracies is None:
            accuracies = [
                list(np.round(rng.normal(0.985 - 0.01 * c, 0.005, seeds).clip(0, 1), 3))
                for c in range(len(configs))
            ]
        cfgs = [
            {**_config(lr, bs, act, epochs, eval_every), **(params or {})}
            for lr, bs, act in configs
        ]
        hashes = [_hash(cfg) for cfg in cfgs]
        sweep_id = sweep_run_id
        if sweep and sweep_id is None:
            sweep_id = self._open_sweep(exp_id, base_tags, study, configs, hashes, sweep_jobs_file)
        logged = Logged(self.uri, experiment, sweep_id or "", config_hashes=hashes)
        status = dict(job_status or {})
        for c, (lr, bs, act) in enumerate(configs):
            if c in not_run:
                continue
            overrides = f"experiment={study} optim.lr={lr} trainer.batch_size={bs}"
            tags = {**base_tags, Tag.CONFIG_HASH: hashes[c], Tag.OVERRIDES: overrides}
            if sweep_id:
                tags[Tag.SWEEP_RUN_ID] = sweep_id
            job = self.client.create_run(
                exp_id, start_time=_ms(next(self._clock)), tags={**tags, Tag.KIND: Kind.JOB}
            )
            jid = job.info.run_id
            logged.job_run_ids.append(jid)
            logged.top_run_id = logged.top_run_id or jid
            params = [Param(k, str(v)) for k, v in {**cfgs[c], "replicas": seeds}.items()]
            self.client.log_batch(jid, params=params)
            if c in failed_jobs:
                self.client.set_tag(jid, Tag.ERROR, "ValueError: lr must be positive")
                self.client.set_terminated(jid, "FAILED")
                continue
            end = status.get(c, "FINISHED")
            for r, acc in enumerate(np.asarray(accuracies[c], dtype=float)):
                rep = self._replica(exp_id, tags, jid, cfgs[c], seeds, r, acc, (c, r) in diverged)
                rep.update(config=c, lr=lr, batch_size=bs, activations=act, status=end)
                logged.replicas.append(rep)
                self._end(rep["run_id"], end)
            self._end(jid, end)
        if sweep_id:
            self._end(sweep_id, sweep_status)
        return logged

    def _end(self, run_id: str, status: str) -> None:
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)

    def _open_sweep(
        self,
        exp_id: str,
        base_tags: dict,
        study: str,
        configs: Sequence[tuple[float, int, str]],
        hashes: list[str],
        jobs_file: bool,
    ) -> str:
        """A sweep run planning one job per config: tag mtl.n_jobs and sweep_jobs.json."""
        tags = {**base_tags, Tag.KIND: Kind.SWEEP, Tag.OVERRIDES: f"experiment={study}"}
        tags[Tag.N_JOBS] = str(len(configs))
        run = self.client.create_run(exp_id, start_time=_ms(next(self._clock)), tags=tags)
        if jobs_file:
            jobs = [
                {"num": c, "overrides": overrides(lr, bs, act), "config_hash": hashes[c]}
                for c, (lr, bs, act) in enumerate(configs)
            ]
            d = self.root / "sweeps" / run.info.run_id
            d.mkdir(parents=True)
            (d / "sweep_jobs.json").write_text(json.dumps({"format": 1, "jobs": jobs}))
            self.client.log_artifact(run.info.run_id, str(d / "sweep_jobs.json"))
        return run.info.run_id

    def _replica(
        self,
        exp_id: str,
        tags: dict,
        jid: str,
        cfg: dict,
        seeds: int,
        seed: int,
        acc: float,
        is_div: bool,
    ) -> dict:
        """One replica run with curves, final metrics and params (not ended)."""
        rtags = {
            **tags,
            Tag.KIND: Kind.REPLICA,
            Tag.JOB_RUN_ID: jid,
            Tag.SEED: str(seed),
            Tag.DIVERGED: "true" if is_div else "false",
        }
        rep = self.client.create_run(exp_id, start_time=_ms(next(self._clock)), tags=rtags)
        rid = rep.info.run_id
        curve = self._curve(acc, cfg["trainer.epochs"], cfg["trainer.eval_every"], seed, is_div)
        final = curve.iloc[-1]
        ts = _ms(0)
        metrics = [
            Metric(CURVE_METRIC[k], float(row[k]), ts, int(row["epoch"]))
            for _, row in curve.iterrows()
            for k in ("train_loss", "test_loss", "train_acc", "test_acc")
        ]
        metrics += [
            Metric(FINAL[k], float(final[k]), ts, 0)
            for k in ("train_loss", "test_loss", "train_acc", "test_acc")
        ]
        metrics += [
            Metric(DIVERGED_METRIC, float(is_div), ts, 0),
            Metric(DIVERGED_EPOCH, float(cfg["trainer.epochs"] // 2 if is_div else -1), ts, 0),
        ]
        params = [Param(k, str(v)) for k, v in {**cfg, "replicas": seeds}.items()]
        params.append(Param("seed", str(seed)))
        self.client.log_batch(rid, metrics=metrics, params=params)
        if self.curves_csv:
            d = self.root / "curves" / rid
            d.mkdir(parents=True)
            curve.to_csv(d / Artifact.CURVES_CSV, index=False)
            self.client.log_artifact(rid, str(d / Artifact.CURVES_CSV))
        return {
            "run_id": rid,
            "job_run_id": jid,
            "seed": seed,
            "diverged": is_div,
            "final_test_acc": float(final["test_acc"]),
        }

    @staticmethod
    def _curve(final_acc: float, epochs: int, every: int, seed: int, diverged: bool):
        """A plausible learning curve ending exactly at ``final_acc`` (NaN loss if diverged)."""
        import pandas as pd

        ep = np.unique(np.r_[np.arange(0, epochs + 1, every), epochs])
        frac = 1 - np.exp(-5 * ep / max(epochs, 1))
        frac = frac / frac[-1]
        test_acc = 0.5 + (final_acc - 0.5) * frac
        train_acc = np.minimum(test_acc + 0.005, 1.0)
        test_loss = 0.5 * np.exp(-4 * ep / max(epochs, 1)) + 0.02 + 0.001 * seed
        train_loss = test_loss * 0.9
        if diverged:
            half = ep >= epochs // 2
            train_loss[half] = test_loss[half] = np.nan
        return pd.DataFrame(
            {
                "epoch": ep,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "train_acc": train_acc,
                "test_acc": test_acc,
            }
        )


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite store, made once: creating one costs 1-3 s of migrations."""
    root = tmp_path_factory.mktemp("template")
    StoreBuilder(root).client.search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def store(tmp_path: Path, _empty_store: Path) -> StoreBuilder:
    """An empty sqlite MLflow store under tmp_path; call ``.study(...)`` to log runs."""
    return StoreBuilder(tmp_path, template=_empty_store)


@pytest.fixture
def grid_configs() -> list[tuple[float, int, str]]:
    """A 2 activations x 3 learning rates x 2 batch sizes grid, as (lr, batch_size, activations)."""
    return [
        (lr, bs, act)
        for act in ("tanh,tanh,tanh", "relu,relu,relu")
        for lr in (0.001, 0.01, 0.1)
        for bs in (10, 25)
    ]


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing (~95% of an analysis' time) in tests about counts and messages."""
    import analysis.report

    monkeypatch.setattr(analysis.report, "_figures", lambda *args, **kwargs: {})
