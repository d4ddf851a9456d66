"""Study-level bootstrap intervals and paired differences between contexts, for any corpus metric.

A metric is given as per-study *sufficient statistics*, an (n_studies, k) array, and a function
from their column sums to the metric's value (vectorised: (m, k) sums -> (m,) values, NaN where
undefined). A mean over studies is rows [v, 1] with `ratio`; a micro ratio (hits over boxes,
2TP over 2TP + FP + FN) is rows [hits, total] with `ratio`; corpus BLEU is its n-gram counts. A
study for which the metric is undefined contributes a row of zeros.

- `bootstrap_interval`: the value on all studies and a percentile bootstrap interval, resampling
  studies with replacement.
- `paired_difference`: two contexts over the *same* studies (row i is study i in both): the
  difference value(B) - value(A); a paired bootstrap percentile interval (each resample draws the
  same studies for both contexts); and a two-sided approximate-randomisation p-value (each study's
  A and B rows swapped with probability 1/2; p = (1 + #{|d*| >= |d|}) / (1 + R), Noreen 1989).

Resamples whose value is undefined (a zero denominator) are left out of the quantiles and counts.
Everything is deterministic for a given `seed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]
N_RESAMPLES = 1000
_CHUNK_CELLS = 4_000_000  # resampled cells held in memory at once
_TIE = 1e-12


def ratio(sums: np.ndarray) -> np.ndarray:
    """Column 0 over column 1 of (m, 2) sums; NaN where the denominator is 0."""
    sums = np.atleast_2d(sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[:, 1] != 0, sums[:, 0] / sums[:, 1], np.nan)


@dataclass(frozen=True)
class Interval:
    """A metric's value on all studies with its bootstrap interval; None where undefined."""

    value: float | None
    lo: float | None
    hi: float | None
    n_studies: int  # studies with a non-zero statistics row


@dataclass(frozen=True)
class PairedDifference:
    """value(B) - value(A) over the studies of both contexts, its paired interval and p-value."""

    difference: float | None
    lo: float | None
    hi: float | None
    p_value: float | None
    n_studies: int


def _value(value_fn: ValueFn, sums: np.ndarray) -> float | None:
    value = float(value_fn(sums[None, :])[0])
    return None if np.isnan(value) else value


def _chunks(n_resamples: int, cells_per_resample: int) -> list[int]:
    size = max(1, _CHUNK_CELLS // max(cells_per_resample, 1))
    return [min(size, n_resamples - start) for start in range(0, n_resamples, size)]


def _quantiles(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=float)
    if stats.ndim != 2 or stats.shape[0] == 0:
        raise ValueError(f"need an (n_studies, k) array of statistics with n_studies > 0, got shape {stats.shape}")
    return stats


def bootstrap_interval(
    stats: np.ndarray,
    value_fn: ValueFn = ratio,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """Value on all studies and its percentile bootstrap (1 - alpha) interval over studies."""
    stats = _check(stats)
    n = len(stats)
    value = _value(value_fn, stats.sum(axis=0))
    used = int(np.any(stats != 0, axis=1).sum())
    if value is None:
        return Interval(None, None, None, used)
    rng = np.random.default_rng(seed)
    draws = [value_fn(stats[rng.integers(0, n, size=(c, n))].sum(axis=1)) for c in _chunks(n_resamples, stats.size)]
    lo, hi = _quantiles(np.concatenate(draws), alpha)
    return Interval(value, lo, hi, used)


def paired_difference(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    value_fn: ValueFn = ratio,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedDifference:
    """value(B) - value(A) with a paired bootstrap interval and an approximate-randomisation p-value."""
    a, b = _check(stats_a), _check(stats_b)
    if a.shape != b.shape:
        raise ValueError(f"paired statistics need the same studies and columns, got {a.shape} and {b.shape}")
    n = len(a)
    used = int(np.any((a != 0) | (b != 0), axis=1).sum())
    value_a, value_b = _value(value_fn, a.sum(axis=0)), _value(value_fn, b.sum(axis=0))
    if value_a is None or value_b is None:
        return PairedDifference(None, None, None, None, used)
    observed = value_b - value_a
    rng = np.random.default_rng(seed)
    boot, perm = [], []
    delta, total_a, total_b = b - a, a.sum(axis=0), b.sum(axis=0)
    for c in _chunks(n_resamples, a.size):
        idx = rng.integers(0, n, size=(c, n))
        boot.append(value_fn(b[idx].sum(axis=1)) - value_fn(a[idx].sum(axis=1)))
        swapped = (rng.random((c, n)) < 0.5).astype(float) @ delta  # rows of A replaced by B, and back
        perm.append(value_fn(total_b - swapped) - value_fn(total_a + swapped))
    lo, hi = _quantiles(np.concatenate(boot), alpha)
    permuted = np.concatenate(perm)
    permuted = permuted[~np.isnan(permuted)]
    extreme = int((np.abs(permuted) >= abs(observed) - _TIE).sum())
    p_value = (1 + extreme) / (1 + permuted.size)
    return PairedDifference(observed, lo, hi, p_value, used)
