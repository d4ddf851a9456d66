"""Bootstrap intervals and paired context differences: known differences, no difference, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from model_backend.paired_stats import bootstrap_interval, paired_difference, ratio


def as_mean(values: np.ndarray) -> np.ndarray:
    """Per-study values -> sufficient statistics of their mean, rows [v, 1]."""
    return np.column_stack([values, np.ones_like(values)])


def test_ratio_is_nan_on_a_zero_denominator() -> None:
    assert np.isnan(ratio(np.array([[1.0, 0.0]]))[0]) and ratio(np.array([3.0, 4.0]))[0] == 0.75


def test_bootstrap_interval_of_a_mean_and_a_micro_ratio() -> None:
    interval = bootstrap_interval(as_mean(np.array([0.0, 1.0] * 50)), n_resamples=2000)
    assert interval.value == 0.5 and interval.n_studies == 100
    assert 0.38 < interval.lo < 0.43 and 0.57 < interval.hi < 0.62  # 0.5 +- 1.96 * 0.05
    micro = bootstrap_interval(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 4.0]]))  # 4 hits of 8; a study without boxes
    assert micro.value == 0.5 and micro.n_studies == 2 and micro.lo <= 0.5 <= micro.hi
    assert bootstrap_interval(np.zeros((5, 2))).value is None
    constant = bootstrap_interval(as_mean(np.full(20, 0.7)))
    assert constant.lo == pytest.approx(0.7) and constant.hi == pytest.approx(0.7)
    with pytest.raises(ValueError, match="n_studies > 0"):
        bootstrap_interval(np.zeros((0, 2)))


def test_known_difference_is_covered_and_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.8, 300)
    noise = rng.normal(0.0, 0.05, 300)
    b = a - 0.07 + (noise - noise.mean())  # B loses exactly 0.07 on average, study by study
    diff = paired_difference(as_mean(a), as_mean(b))
    assert diff.difference == pytest.approx(-0.07)
    assert diff.lo < -0.07 < diff.hi < 0.0  # the interval covers the difference and excludes 0
    assert diff.hi - diff.lo < 0.02  # paired: only the noise matters, not the spread of a (sd 0.17)
    assert diff.p_value == pytest.approx(1 / 1001) and diff.n_studies == 300


def test_no_difference() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0.0, 1.0, 200)
    same = paired_difference(as_mean(a), as_mean(a))
    assert (same.difference, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    b = a + rng.normal(0.0, 0.2, 200)  # noisy, no systematic change
    noisy = paired_difference(as_mean(a), as_mean(b))
    assert noisy.lo < 0.0 < noisy.hi and noisy.p_value > 0.05


def test_micro_ratio_difference() -> None:
    # A: 60 of 100 boxes hit over 50 studies; B: 40 of 100 on the same studies.
    boxes = np.full(50, 2.0)
    hits_a = np.array([2.0, 1.0] * 10 + [1.0] * 30)
    hits_b = hits_a - np.array([1.0] * 20 + [0.0] * 30)
    diff = paired_difference(np.column_stack([hits_a, boxes]), np.column_stack([hits_b, boxes]))
    assert diff.difference == pytest.approx(0.4 - 0.6) and diff.hi < 0 and diff.p_value < 0.01


def test_undefined_side_and_mismatched_shapes() -> None:
    ones = as_mean(np.ones(4))
    assert paired_difference(np.zeros((4, 2)), ones).difference is None
    with pytest.raises(ValueError, match="same studies"):
        paired_difference(ones, as_mean(np.ones(5)))


def test_interval_coverage_and_null_p_values() -> None:
    """Over 80 simulated datasets: the 95% interval covers the true difference about 95% of the time and
    p < 0.05 about 5% of the time when there is no difference."""
    rng = np.random.default_rng(3)
    covered = rejected = 0
    for trial in range(80):
        a = rng.uniform(0.0, 1.0, 60)
        b_shifted = a + 0.05 + rng.normal(0.0, 0.15, 60)  # true mean difference 0.05
        shifted = paired_difference(as_mean(a), as_mean(b_shifted), n_resamples=400, seed=trial)
        covered += shifted.lo <= 0.05 <= shifted.hi
        null = paired_difference(as_mean(a), as_mean(a + rng.normal(0.0, 0.15, 60)), n_resamples=400, seed=trial)
        rejected += null.p_value < 0.05
    assert 0.85 <= covered / 80 <= 1.0
    assert rejected / 80 <= 0.15
