"""DeLong's AUC variance and paired difference against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.delong import (
    auc_difference,
    auc_interval,
    delong_covariance,
    midranks,
)
from dfcompress.evaluate.metrics import auc
from strategies import scored_samples


def _brute(labels: list[int], scores: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's definitions, pair by pair: psi(x, y) = 1 if x > y, 1/2 if equal, else 0."""
    y = np.asarray(labels)
    k = len(scores)
    v10s, v01s = [], []
    for r in range(k):
        s = np.asarray(scores[r], dtype=np.float64)
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    v10, v01 = np.array(v10s), np.array(v01s)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((v10[a] - v10[a].mean()) * (v10[b] - v10[b].mean())) / (m - 1)
            s01 = np.sum((v01[a] - v01[a].mean()) * (v01[b] - v01[b].mean())) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return v10.mean(axis=1), cov


@given(scored_samples(rows=1))
def test_variance_matches_the_pairwise_definition(
    sample: tuple[list[int], list[list[float]]],
) -> None:
    labels, scores = sample
    aucs, cov = delong_covariance(labels, scores[0])
    ref_auc, ref_cov = _brute(labels, scores)
    np.testing.assert_allclose(aucs, ref_auc, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(auc(labels, scores[0]))


@given(scored_samples(rows=2))
def test_paired_difference_matches_the_pairwise_definition(
    sample: tuple[list[int], list[list[float]]],
) -> None:
    labels, (a, b) = sample
    ref_auc, ref_cov = _brute(labels, [a, b])
    d = auc_difference(labels, a, b)
    assert d.auc == pytest.approx(ref_auc[1] - ref_auc[0], abs=1e-12)
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    assert d.variance == pytest.approx(max(var, 0.0), abs=1e-12)
    assert d.low <= d.auc <= d.high


@given(scored_samples(rows=1, max_size=12))
def test_midranks_average_ties(sample: tuple[list[int], list[list[float]]]) -> None:
    x = np.asarray(sample[1][0])
    brute = [1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x]
    np.testing.assert_allclose(midranks(x), brute)


def test_a_tiny_difference_on_few_samples_is_not_significant() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    base = y + rng.normal(0, 1.2, 400)
    other = base + rng.normal(0, 0.05, 400)  # a re-quantized twin: nearly the same ranks
    d = auc_difference(y, base, other)
    assert abs(d.auc) < 0.01 and not d.excludes_zero
    far = auc_difference(y, base, rng.normal(0, 1, 400))  # a coin flip: clearly worse
    assert far.high < 0 and far.excludes_zero


def test_interval_contains_the_auc_and_narrows_with_samples() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        y = np.arange(n) % 2
        iv = auc_interval(y, y + rng.normal(0, 1, n))
        assert 0.0 <= iv.low <= iv.auc <= iv.high <= 1.0
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(16)


def test_undefined_cases_are_nan_and_bad_inputs_are_named() -> None:
    iv = auc_interval([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(iv.auc) and math.isnan(iv.variance)
    one_real = auc_interval([0, 1, 1], [0.1, 0.2, 0.3])
    assert one_real.auc == 1.0 and math.isnan(one_real.variance)
    assert not auc_difference([0, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]).excludes_zero
    with pytest.raises(DfcompressError, match=r"level=1\.5"):
        auc_interval([0, 1], [0.1, 0.2], level=1.5)
    with pytest.raises(DfcompressError, match="labels must be 0"):
        auc_interval([0, 2], [0.1, 0.2])
    with pytest.raises(DfcompressError, match="3 labels"):
        auc_interval([0, 1, 1], [0.1, 0.2])
    # a non-finite score drops that sample from every paired row
    d = auc_difference([0, 0, 1, 1, 0], [0.1, 0.2, 0.8, 0.9, np.nan], [0.1, 0.2, 0.8, 0.9, 0.5])
    assert d.auc == 0.0
