"""A process draws every job's figures on the same two Figures (experiments/plots.py): what it
draws must not depend on what it drew before, pixel for pixel; and the job's forked artifact
writer draws the replica figures at the same time without either corrupting the other's fonts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from experiments import plots

R, E = 10, 41


def _curves(seed: int, diverged: bool = False) -> dict[str, np.ndarray]:
    """A job's curves (10 replicas, 41 points), at another scale for each seed; with
    `diverged`, replica 3 is NaN from point 20 on."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(E) * 50
    decay = rng.uniform(0.2, 2.0) * np.exp(-epochs / rng.uniform(200, 900))
    curves = {
        "epoch": epochs,
        "train_loss": decay * rng.uniform(0.5, 1, (R, 1)) + rng.uniform(0, 0.01, (R, E)),
        "test_loss": decay * rng.uniform(0.5, 1, (R, 1)) + rng.uniform(0, 0.01, (R, E)),
        "train_acc": rng.uniform(0.5, 0.9) + 0.1 * rng.uniform(0, 1, (R, E)),
        "test_acc": rng.uniform(0.4, 0.9) + 0.1 * rng.uniform(0, 1, (R, E)),
    }
    if diverged:
        for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
            curves[key][3, 20:] = np.nan
    return curves


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def fresh():
    """Drawing starts from new figures, as in a new process."""
    plots._reused.clear()
    yield
    plots._reused.clear()


def test_a_job_figure_is_the_same_whatever_was_drawn_before(tmp_path, fresh):
    jobs = [(_curves(1), "job 1"), (_curves(2, diverged=True), "job 2, longer title"),
            (_curves(3), "job 3")]  # fmt: skip
    first = {}
    for i, (curves, title) in enumerate(jobs):
        plots._reused.clear()
        plots.job_figure(tmp_path / f"fresh{i}.png", curves, title, "MSE")
        first[i] = _pixels(tmp_path / f"fresh{i}.png")
    for i, (curves, title) in [*enumerate(jobs), *reversed(list(enumerate(jobs)))]:
        plots.job_figure(tmp_path / "again.png", curves, title, "MSE")
        assert np.array_equal(_pixels(tmp_path / "again.png"), first[i]), i
    assert not np.array_equal(first[0], first[1])


def test_replica_figures_are_the_same_whatever_was_drawn_before(tmp_path, fresh):
    jobs = [_curves(4), _curves(5, diverged=True), _curves(6)]
    first = {}
    for i, curves in enumerate(jobs):
        plots._reused.clear()
        plots.replica_figures(curves, np.ones(R, dtype=bool)).save(
            tmp_path / "fresh.png", curves, 3, "seed 3, diverged at epoch 1000"
        )
        first[i] = _pixels(tmp_path / "fresh.png")
    for i, curves in [*enumerate(jobs), *reversed(list(enumerate(jobs)))]:
        figures = plots.replica_figures(curves, np.ones(R, dtype=bool))
        figures.save(tmp_path / "other.png", curves, 0, "seed 0")
        figures.save(tmp_path / "again.png", curves, 3, "seed 3, diverged at epoch 1000")
        assert np.array_equal(_pixels(tmp_path / "again.png"), first[i]), i
    assert not np.array_equal(first[0], first[2])


def test_a_forked_writer_and_its_parent_draw_at_once_without_corrupting_fonts(tmp_path, fresh):
    """As a job's upload does: the parent draws the replicas' background and forks the artifact
    writer, which draws each replica's lines and label on it while the parent draws the job
    figure. The child's figures are those drawn with nobody else drawing. (When the child
    redrew the background itself, axes and tick labels included, on a figure the parent had
    drawn, FreeType failed: "FT_Load_Glyph failed: invalid outline", one job in three.)"""
    import os

    failures = []
    for i in range(12):
        curves = _curves(i, diverged=i % 3 == 0)
        plots.job_figure(tmp_path / "warm.png", curves, f"job {i}", "MSE")
        figures = plots.replica_figures(curves, np.ones(R, dtype=bool))
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for r in range(R):
                    figures.save(tmp_path / f"child{i}" / f"{r}.png", curves, r, f"seed {r}")
            except Exception:
                code = 1
            os._exit(code)
        try:
            plots.job_figure(tmp_path / f"job{i}.png", curves, f"j{i} bs10 lr0.003", "MSE")
        except RuntimeError as exc:
            failures.append(f"parent, job {i}: {exc}")
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failures.append(f"child, job {i}")
            continue
        for r in range(R):
            figures.save(tmp_path / "alone.png", curves, r, f"seed {r}")
            if not np.array_equal(_pixels(tmp_path / f"child{i}" / f"{r}.png"),
                                  _pixels(tmp_path / "alone.png")):  # fmt: skip
                failures.append(f"child, job {i}, replica {r}: other pixels")
    assert failures == []
