"""Build MLflow stores with known runs, in the contract's layout, without the training harness."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Logged:
    """What the builder logged, so tests can compare the analysis against it."""

    uri: str
    experiment: str
    top_run_id: str  # the sweep run if any, else the job run
    job_run_ids: list[str] = field(default_factory=list)
    replicas: list[dict] = field(default_factory=list)  # one dict per replica run


def _config(lr: float, batch_size: int, activations: str, epochs: int, eval_every: int) -> dict:
    return {
        "model.hidden": "25,25,25",
        "model.activations": activations,
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
    ) -> Logged:
        """Log one study; ``accuracies[c][r]`` is replica r of config c's final test accuracy."""
        exp_id = self.experiment(experiment)
        sweep = len(configs) > 1 if sweep is None else sweep
        command = f"python -m experiments.train {'-m ' if sweep else ''}experiment={study}"
        base_tags = {"mtl.study": study, "mtl.git_commit": COMMIT, "mtl.command": command}
        rng = np.random.default_rng(len(configs) * 1000 + seeds)
        if accuracies is None:
            accuracies = [
                list(np.round(rng.normal(0.985 - 0.01 * c, 0.005, seeds).clip(0, 1), 3))
                for c in range(len(configs))
            ]
        top_id = ""
        sweep_id = None
        if sweep:
            run = self.client.create_run(
                exp_id,
                start_time=_ms(next(self._clock)),
                tags={**base_tags, "mtl.kind": "sweep", "mtl.overrides": f"experiment={study}"},
            )
            sweep_id = top_id = run.info.run_id
        logged = Logged(self.uri, experiment, top_id)
        for c, (lr, bs, act) in enumerate(configs):
            cfg = _config(lr, bs, act, epochs, eval_every)
            chash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
            overrides = f"experiment={study} optim.lr={lr} trainer.batch_size={bs}"
            tags = {**base_tags, "mtl.config_hash": chash, "mtl.overrides": overrides}
            if sweep_id:
                tags["mtl.sweep_run_id"] = sweep_id
            job = self.client.create_run(
                exp_id, start_time=_ms(next(self._clock)), tags={**tags, "mtl.kind": "job"}
            )
            jid = job.info.run_id
            logged.job_run_ids.append(jid)
            top_id = top_id or jid
            logged.top_run_id = top_id
            self.client.log_batch(
                jid, params=[Param(k, str(v)) for k, v in {**cfg, "replicas": seeds}.items()]
            )
            if c in failed_jobs:
                self.client.set_tag(jid, "mtl.error", "ValueError: lr must be positive")
                self.client.set_terminated(jid, "FAILED")
                continue
            accs = np.asarray(accuracies[c], dtype=float)
            for r, acc in enumerate(accs):
                seed = r
                is_div = (c, r) in diverged
                rtags = {
                    **tags,
                    "mtl.kind": "replica",
                    "mtl.job_run_id": jid,
                    "mtl.seed": str(seed),
                    "mtl.diverged": "true" if is_div else "false",
                }
                rep = self.client.create_run(exp_id, start_time=_ms(next(self._clock)), tags=rtags)
                rid = rep.info.run_id
                curve = self._curve(acc, epochs, eval_every, seed, is_div)
                final = curve.iloc[-1]
                ts = _ms(0)
                metrics = [
                    Metric(k, float(row[k]), ts, int(row["epoch"]))
                    for _, row in curve.iterrows()
                    for k in ("train_loss", "test_loss", "train_acc", "test_acc")
                ]
                metrics += [
                    Metric(f"final_{k}", float(final[k]), ts, 0)
                    for k in ("train_loss", "test_loss", "train_acc", "test_acc")
                ]
                metrics += [
                    Metric("diverged", float(is_div), ts, 0),
                    Metric("diverged_epoch", float(epochs // 2 if is_div else -1), ts, 0),
                ]
                params = [Param(k, str(v)) for k, v in {**cfg, "replicas": seeds}.items()]
                params.append(Param("seed", str(seed)))
                self.client.log_batch(rid, metrics=metrics, params=params)
                if curves_csv:
                    d = self.root / "curves" / rid
                    d.mkdir(parents=True)
                    curve.to_csv(d / "curves.csv", index=False)
                    self.client.log_artifact(rid, str(d / "curves.csv"))
                self.client.set_terminated(rid, "FINISHED")
                logged.replicas.append(
                    {
                        "run_id": rid,
                        "job_run_id": jid,
                        "config": c,
                        "seed": seed,
                        "diverged": is_div,
                        "final_test_acc": float(final["test_acc"]),
                        "lr": lr,
                        "batch_size": bs,
                        "activations": act,
                    }
                )
            self.client.set_terminated(jid, "FINISHED")
        if sweep_id:
            self.client.set_terminated(sweep_id, "FINISHED")
        return logged

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
