"""Comparisons between training arms that say how sure they are: mean ± sd over seeds and a
paired bootstrap interval of the difference over the test items.

Two arms are tested on the *same* test crops, so their difference is measured item by item:
resampling the crops (with replacement, the same draw for both arms and every seed) and
recomputing the mean difference gives its sampling distribution; the 2.5th and 97.5th percentiles
are the 95 % interval. With several seeds per arm, each resample's difference is the mean over
seeds of the per-seed differences, so the interval covers test-set sampling at the seeds' average;
the spread between seeds is reported separately as the sd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "mean_and_sd", "paired_bootstrap"]


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of (first − second) over the test items (averaged over seeds) and its interval."""

    mean: float
    low: float
    high: float
    level: float
    items: int
    seeds: int
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval is on one side of 0 (the arms differ at this level)."""
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "items": self.items,
            "seeds": self.seeds,
            "resamples": self.resamples,
            "excludes_zero": self.excludes_zero,
        }


def mean_and_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def paired_bootstrap(first, second, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Paired bootstrap interval of mean(first − second).

    Args:
        first, second: per-item scores of two arms on the same items, ``(N,)`` or ``(S, N)`` for S
            seeds (e.g. 1.0/0.0 for a correctly/wrongly classified test crop). Item i must be the
            same test item in every row of both arrays.
        resamples: bootstrap resamples of the N items.
        level: coverage of the interval (percentile method).
        seed: the resampling's random seed (the interval is reproducible).
    """
    a = np.atleast_2d(np.asarray(first, dtype=np.float64))
    b = np.atleast_2d(np.asarray(second, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"need two (N,) or (S, N) arrays of the same shape with N > 0; got {a.shape} and {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    difference = (a - b).mean(axis=0)  # per item, averaged over seeds
    n = difference.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # bounded memory: 256 × N indices at a time
        count = min(256, resamples - start)
        means[start : start + count] = difference[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(
        mean=float(difference.mean()),
        low=float(low),
        high=float(high),
        level=level,
        items=n,
        seeds=a.shape[0],
        resamples=resamples,
    )
