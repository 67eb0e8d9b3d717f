"""Frame-level metrics: AUC against independent rank statistics, hand-checked EER/AP, n/a."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import (
    UndefinedMetricWarning,
    auc,
    average_precision,
    confusion,
    eer,
    fmt,
    roc_curve,
    summarize,
)


@st.composite
def tied_scores(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    """Labels with both classes and scores drawn from a handful of values (heavy ties)."""
    n = draw(st.integers(2, 60))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    labels[0], labels[1] = 0, 1
    levels = draw(st.integers(1, 5))
    scores = draw(st.lists(st.integers(0, levels), min_size=n, max_size=n))
    return labels, [s / levels if levels else 0.0 for s in scores]


def _pairwise_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=150, deadline=None)
@given(tied_scores())
def test_auc_matches_mann_whitney_u_with_ties(data: tuple[list[int], list[float]]) -> None:
    labels, scores = data
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    expected = u / (len(pos) * len(neg))
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(tied_scores())
def test_auc_equals_area_under_full_roc(data: tuple[list[int], list[float]]) -> None:
    labels, scores = data
    r = roc_curve(labels, scores)
    area = float(np.sum(np.diff(r.fpr) * (r.tpr[1:] + r.tpr[:-1]) / 2))
    assert area == pytest.approx(auc(labels, scores), abs=1e-12)
    assert r.fpr[0] == r.tpr[0] == 0.0 and r.fpr[-1] == r.tpr[-1] == 1.0
    assert np.all(np.diff(r.fpr) >= 0) and np.all(np.diff(r.tpr) >= 0)


def test_constant_scores_give_half_and_reversal_gives_complement() -> None:
    assert auc([0, 1, 0, 1, 1], [0.3] * 5) == 0.5
    labels, scores = [0, 1, 0, 1, 1], [0.1, 0.7, 0.4, 0.2, 0.9]
    assert auc(labels, [-s for s in scores]) == pytest.approx(1 - auc(labels, scores))


def test_accepts_tensors_arrays_and_lists_alike() -> None:
    labels, scores = [0, 1, 1, 0], [0.2, 0.8, 0.4, 0.5]
    a = auc(labels, scores)
    assert auc(torch.tensor(labels), torch.tensor(scores, dtype=torch.float16)) == a
    assert auc(np.array(labels, dtype=bool), np.array(scores)) == a
    assert auc(torch.tensor(labels), torch.tensor(scores).unsqueeze(1)) == a


def test_eer_hand_checked() -> None:
    # Perfect separation: 0. Fully inverted: 1. Constant: 0.5.
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert eer([0, 1, 0, 1], [0.5] * 4) == 0.5
    # reals 0.1 0.4 0.6 0.9, fakes 0.3 0.5 0.7 0.8: at t in (0.5, 0.6] FPR = 2/4, FNR = 2/4.
    assert eer([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.4, 0.6, 0.9, 0.3, 0.5, 0.7, 0.8]) == 0.5
    # 3 reals, 2 fakes: ROC (0,0) (0,.5) (1/3,.5) (1/3,1) ... FPR-FNR goes -1/2 -> -1/6 -> 1/3:
    # interpolated between (1/3, 1/2) and (1/3, 1): FPR stays 1/3 while FNR falls to it.
    assert eer([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7, 0.5]) == pytest.approx(1 / 3)


def test_eer_interpolates_between_roc_points() -> None:
    # ROC (0,0) (0,1/2) then one tied step to (1/2,1): FPR - FNR goes -1/2 -> +1/2, so the
    # crossing is halfway along that step, at FPR = FNR = 1/4.
    labels, scores = [0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9]
    assert eer(labels, scores) == pytest.approx(0.25)


def test_average_precision_hand_checked() -> None:
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    # all tied: one threshold, precision = prevalence
    assert average_precision([0, 1, 1, 1], [0.4] * 4) == pytest.approx(0.75)


def test_confusion_counts_and_strict_threshold() -> None:
    c = confusion([0, 0, 1, 1, 1], [0.5, 0.7, 0.5, 0.51, 0.9])
    assert (c.tp, c.tn, c.fp, c.fn) == (2, 1, 1, 1)  # 0.5 is not > 0.5
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    assert c.accuracy == pytest.approx(3 / 5)
    assert confusion([0, 1], [0.2, 0.4], threshold=0.3).tp == 1


def test_confusion_zero_denominators_are_na_not_zero() -> None:
    nothing_called_fake = confusion([0, 1, 1], [0.1, 0.2, 0.3])
    assert nothing_called_fake.precision is None
    assert nothing_called_fake.recall == 0.0
    assert fmt(nothing_called_fake.precision) == "n/a"
    only_reals = confusion([0, 0], [0.1, 0.9])
    assert only_reals.recall is None and only_reals.f1 == 0.0
    empty = confusion([], [])
    assert empty.accuracy is None and empty.f1 is None
    assert summarize([0, 0], [0.1, 0.2]).as_dict()["confusion"]["precision"] is None


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_single_class_gives_nan_with_reason(labels: list[int]) -> None:
    scores = [0.2, 0.9, 0.4][: len(labels)]
    m = summarize(labels, scores)
    assert math.isnan(m.auc) and math.isnan(m.eer) and math.isnan(m.ap)
    assert any("undefined" in note for note in m.notes)
    assert m.as_dict()["auc"] is None
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        assert math.isnan(auc(labels, scores))
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(eer(labels, scores))


def test_nonfinite_scores_dropped_and_counted_or_raised() -> None:
    labels = [0, 1, 0, 1, 1]
    scores = [0.1, float("nan"), 0.3, float("inf"), 0.8]
    m = summarize(labels, scores)
    assert (m.n_samples, m.n_dropped) == (3, 2)
    assert m.auc == 1.0
    assert "dropped 2" in m.notes[0]
    with pytest.warns(UndefinedMetricWarning, match="dropped 2"):
        assert auc(labels, scores) == 1.0
    with pytest.raises(DfcompressError, match="2 of 5 scores"):
        summarize(labels, scores, nonfinite="raise")


def test_summarize_emits_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summarize([1, 1], [0.5, float("nan")])


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], "one-dimensional"),
    ],
)
def test_bad_input_is_a_clear_error(labels: object, scores: object, match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        summarize(labels, scores)  # type: ignore[arg-type]


def test_bad_options_rejected() -> None:
    with pytest.raises(DfcompressError, match="nonfinite='keep'"):
        auc([0, 1], [0.1, 0.2], nonfinite="keep")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="threshold=nan"):
        confusion([0, 1], [0.1, 0.2], threshold=float("nan"))
