"""Bootstrap confidence intervals for the mean and the standard deviation of per-run accuracies.

Two methods:

- ``m_out_of_n_bootstrap``: the report's method. ``n_resamples`` resamples of ``resample_size``
  values drawn with replacement from the ``n`` values, percentile interval. scipy resamples n out
  of n only, so this is numpy, in chunks so that memory stays bounded whatever ``n_resamples``.
- ``scipy_bootstrap``: the standard n-out-of-n bootstrap through ``scipy.stats.bootstrap``
  (BCa by default; percentile and basic on request).

Both return ``BootstrapResult`` (one ``Interval`` for the mean, one for the std, ddof=1 in both).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from analysis.errors import AnalysisError

SCIPY_METHODS = ("BCa", "percentile", "basic")
# Resamples per chunk: 16k x 100 int16 indices + float64 values stay near 16 MB, which keeps
# a chunk in cache (larger chunks were slower here).
_CHUNK = 1 << 14
# Fewer resamples leave the ends of a 99% interval (its 0.5% and 99.5% quantiles) resting on a
# handful of values: 1,000 puts 5 beyond each end.
MIN_RESAMPLES = 1_000
# The caps keep an analysis within a minute or so and under a GB on the 2-core machine; the
# measured times and memory (benchmarks/analysis.py) are in benchmarks/README.md. 10^12
# (accepted once) ended in a MemoryError.
MAX_RESAMPLES = 10_000_000
# Per grid configuration, lower: the report's grid bootstraps 100 configurations.
MAX_GRID_RESAMPLES = 1_000_000
# Peak memory of the whole CLI per resample (both methods' distributions and the figure).
BYTES_PER_RESAMPLE = 50


@dataclass(frozen=True)
class Interval:
    """A confidence interval for one statistic, with the bootstrap distribution behind it."""

    statistic: str  # "mean" or "std"
    estimate: float  # the statistic on the full sample (std with ddof=1)
    low: float
    high: float
    distribution: np.ndarray = field(repr=False)  # [n_resamples] bootstrap replicates

    @property
    def width(self) -> float:
        """high - low."""
        return self.high - self.low


@dataclass(frozen=True)
class BootstrapResult:
    """Intervals for the mean and the std of one sample, and how they were computed."""

    method: str  # "m-out-of-n percentile", "BCa", "percentile", "basic"
    n: int  # values in the sample
    resample_size: int  # values per resample (= n for the standard bootstrap)
    n_resamples: int
    confidence: float
    seed: int
    mean: Interval
    std: Interval
    seconds: float  # wall time of the computation
    note: str = ""  # e.g. why a point interval or a fallback was used

    def as_dict(self) -> dict[str, object]:
        """Plain numbers for summary.json (distributions left out)."""
        out: dict[str, object] = {
            k: getattr(self, k)
            for k in ("method", "n", "resample_size", "n_resamples", "confidence", "seed")
        }
        for iv in (self.mean, self.std):
            out[iv.statistic] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high}
        out["seconds"] = round(self.seconds, 4)
        out["note"] = self.note
        return out


def _check_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return values as a finite 1-D float64 array with at least 2 entries, or raise."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise AnalysisError(
            f"bootstrap needs a 1-D sequence of per-run values; got an array of shape {x.shape}."
        )
    if x.size < 2:
        raise AnalysisError(
            f"bootstrap needs at least 2 values (one per run) to estimate a spread; got {x.size}. "
            "Select more runs (more seeds, or a study with replicas >= 2)."
        )
    if not np.all(np.isfinite(x)):
        bad = x[~np.isfinite(x)]
        raise AnalysisError(
            f"bootstrap values must be finite; got {bad.size} non-finite value(s), e.g. {bad[0]}. "
            "Diverged runs should be excluded (and counted) before the bootstrap."
        )
    return x


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise AnalysisError(
            f"confidence must be strictly between 0 and 1 (e.g. 0.99); got {confidence!r}."
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AnalysisError(f"{name} must be a positive integer; got {value!r}.")


def check_resample_count(
    flag: str, value: int, maximum: int = MAX_RESAMPLES, confidence: float = 0.99
) -> None:
    """Raise unless MIN_RESAMPLES <= value <= maximum, naming the flag, the value and the range."""
    accepted = f"accepted: {MIN_RESAMPLES:,} to {maximum:,}"
    if value < MIN_RESAMPLES:
        tail = (1 - confidence) / 2
        raise AnalysisError(
            f"{flag} {value:,} is too few resamples for a {confidence:.0%} interval: its ends are "
            f"the {tail:.2%} and {1 - tail:.2%} quantiles of the resamples, and of {value:,} only "
            f"{value * tail:.3g} lie beyond each end; {accepted}."
        )
    if value > maximum:
        raise AnalysisError(
            f"{flag} {value:,} is more resamples than this analysis computes in reasonable time "
            f"and memory (~{value * BYTES_PER_RESAMPLE / 1e9:,.1f} GB at ~{BYTES_PER_RESAMPLE} "
            f"bytes each); {accepted} (measured times and memory: benchmarks/README.md)."
        )


def _check_cap(n_resamples: int) -> None:
    if n_resamples > MAX_RESAMPLES:
        check_resample_count("n_resamples", n_resamples)


def _percentile(dist: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(dist, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _resample_moments(
    c: np.ndarray,
    n_resamples: int,
    m: int,
    seed: int,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=1) of each of ``n_resamples`` resamples of m of the values ``c``,
    drawn ``chunk`` resamples at a time so that memory stays bounded."""
    n = c.size
    # Smallest index type that holds n: int16 draws were faster than int64 here.
    idx_dtype = np.int16 if n <= np.iinfo(np.int16).max else np.int64
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    stds = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        sample = c[rng.integers(0, n, size=(k, m), dtype=idx_dtype)]
        mu = sample.mean(axis=1)
        ss = np.einsum("ij,ij->i", sample, sample) - m * mu * mu
        means[start : start + k] = mu
        stds[start : start + k] = np.sqrt(np.maximum(ss, 0.0) / (m - 1))
        if progress is not None:
            progress(start + k, n_resamples)
    return means, stds


def m_out_of_n_bootstrap(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1_000_000,
    resample_size: int = 100,
    confidence: float = 0.99,
    seed: int = 0,
    chunk: int = _CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> BootstrapResult:
    """The report's bootstrap: resamples of ``resample_size`` of the n values, percentile CIs.

    The std of each resample uses ddof=1. ``progress(done, total)`` is called after each chunk.
    """
    x = _check_values(values)
    _check_positive("n_resamples", n_resamples)
    _check_cap(n_resamples)
    _check_positive("resample_size", resample_size)
    _check_positive("chunk", chunk)
    _check_confidence(confidence)
    if resample_size < 2:
        raise AnalysisError(
            f"resample_size must be >= 2 so that each resample has a std (ddof=1); "
            f"got {resample_size}."
        )
    t0 = time.perf_counter()
    n, m = x.size, resample_size
    center = float(x.mean())
    # Centred values keep the one-pass variance (sum of squares minus m*mean^2) exact enough:
    # accuracies sit near 0.98 with spreads near 0.005, which would cancel badly uncentred.
    means, stds = _resample_moments(x - center, n_resamples, m, seed, chunk, progress)
    means += center
    note = ""
    if np.ptp(x) == 0.0:
        # All values equal: every resample is that value; say so instead of a rounding artefact.
        means[:] = center
        stds[:] = 0.0
        note = "all values equal: point interval"
    mean_iv = Interval("mean", center, *_percentile(means, confidence), distribution=means)
    std_iv = Interval("std", float(x.std(ddof=1)), *_percentile(stds, confidence), stds)
    return BootstrapResult(
        method="m-out-of-n percentile",
        n=n,
        resample_size=m,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        mean=mean_iv,
        std=std_iv,
        seconds=time.perf_counter() - t0,
        note=note,
    )


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.std(x, axis=axis, ddof=1)


def scipy_interval(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    *,
    n_resamples: int,
    confidence: float,
    method: str,
    seed: int,
    batch: int = 10_000,
) -> tuple[float, float, np.ndarray, bool]:
    """(low, high, bootstrap distribution, fell back) of ``statistic`` over ``samples`` by
    ``scipy.stats.bootstrap``. Where ``method`` is undefined (BCa with a distribution all on
    one side, tiny n) the percentile interval of the same resamples is returned instead, and
    ``fell back`` is True, so that the caller can say so."""
    # Warnings silenced: an undefined interval is detected below and reported by the caller.
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            samples,
            statistic,
            n_resamples=n_resamples,
            batch=batch,
            vectorized=True,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution)
    if np.isfinite(low) and np.isfinite(high):
        return low, high, dist, False
    return (*_percentile(dist, confidence), dist, True)


def _scipy_method(method: str) -> str:
    """The method's name as scipy spells it, or raise naming the accepted ones."""
    by_lower = {m.lower(): m for m in SCIPY_METHODS}
    if method.lower() not in by_lower:
        raise AnalysisError(
            f"bootstrap method {method!r} is not known; accepted: {', '.join(SCIPY_METHODS)} "
            "(case-insensitive)."
        )
    return by_lower[method.lower()]


def scipy_bootstrap(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1_000_000,
    confidence: float = 0.99,
    method: str = "BCa",
    seed: int = 0,
    batch: int = 10_000,
) -> BootstrapResult:
    """The standard n-out-of-n bootstrap via ``scipy.stats.bootstrap``, for the mean and std.

    ``batch`` resamples are drawn at a time so memory stays bounded. BCa is undefined when all
    values are equal (scipy returns NaN), so that case returns the point interval directly.
    """
    x = _check_values(values)
    _check_positive("n_resamples", n_resamples)
    _check_cap(n_resamples)
    _check_positive("batch", batch)
    _check_confidence(confidence)
    method = _scipy_method(method)
    t0 = time.perf_counter()
    center, spread = float(x.mean()), float(x.std(ddof=1))
    common = dict(n=x.size, resample_size=x.size, n_resamples=n_resamples)
    if np.ptp(x) == 0.0:
        return BootstrapResult(
            method=method,
            **common,
            confidence=confidence,
            seed=seed,
            mean=Interval("mean", center, center, center, np.full(1, center)),
            std=Interval("std", 0.0, 0.0, 0.0, np.zeros(1)),
            seconds=time.perf_counter() - t0,
            note="all values equal: point interval",
        )
    intervals = []
    notes = []
    for name, fn, estimate in (("mean", _mean, center), ("std", _std, spread)):
        # Same seed for both statistics: they see the same resamples, as in the m-out-of-n method.
        low, high, dist, fell_back = scipy_interval(
            (x,), fn, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
            batch=batch,
        )  # fmt: skip
        if fell_back:
            notes.append(f"{name}: {method} undefined, percentile interval used")
        intervals.append(Interval(name, estimate, low, high, dist))
    return BootstrapResult(
        method=method,
        **common,
        confidence=confidence,
        seed=seed,
        mean=intervals[0],
        std=intervals[1],
        seconds=time.perf_counter() - t0,
        note="; ".join(notes),
    )


def normal_half_width(std: float, n: int, confidence: float = 0.99) -> float:
    """Half-width z * std / sqrt(n) of the normal-theory interval for a mean of n values."""
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return z * std / float(np.sqrt(n))
