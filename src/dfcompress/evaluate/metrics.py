"""Binary detection metrics: AUC, ROC, EER, average precision, confusion at a threshold.

Conventions used everywhere in dfcompress:

- label ``1`` means *fake*, ``0`` means *real*;
- a score is the detector's belief that the sample is fake (``P(fake)``, or any
  monotone transform of it such as the log-odds, for the rank-based metrics);
- at a threshold ``t`` a sample is called fake iff ``score > t``.

Inputs may be lists, numpy arrays or torch tensors; everything is computed in
float64. Scores that are NaN or infinite are dropped and counted
(``nonfinite="drop"``, the default) or rejected (``nonfinite="raise"``).

Undefined values are never reported as 0:

- AUC, EER and AP need both classes. With a single class they are ``nan``;
  :func:`summarize` records the reason in :attr:`Metrics.notes`, and the
  stand-alone functions emit an :class:`UndefinedMetricWarning`.
- A ratio in :class:`Confusion` whose denominator is zero is ``None`` and is
  rendered ``"n/a"`` by :func:`fmt`.

>>> m = summarize([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
>>> m.auc, m.confusion.tp, m.confusion.fp
(0.75, 1, 1)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from dfcompress.errors import DfcompressError

__all__ = [
    "ArrayLike",
    "Confusion",
    "Metrics",
    "Nonfinite",
    "Roc",
    "UndefinedMetricWarning",
    "auc",
    "average_precision",
    "confusion",
    "eer",
    "fmt",
    "roc_curve",
    "summarize",
]

ArrayLike: TypeAlias = "Sequence[float] | Sequence[int] | npt.NDArray[Any] | torch.Tensor"
"""What the metric functions accept for labels and scores."""

Nonfinite: TypeAlias = Literal["drop", "raise"]
"""What to do with NaN / infinite scores: drop them (and count), or raise."""

_F64: TypeAlias = npt.NDArray[np.float64]
_I64: TypeAlias = npt.NDArray[np.int64]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given input (e.g. a single class) and is NaN."""


def _to_numpy(values: ArrayLike, what: str) -> npt.NDArray[Any]:
    if isinstance(values, torch.Tensor):
        arr = values.detach().cpu().to(torch.float64).numpy()
    else:
        arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DfcompressError(f"{what} must be one-dimensional, got shape {tuple(arr.shape)}")
    return arr


def _clean(labels: ArrayLike, scores: ArrayLike, nonfinite: Nonfinite) -> tuple[_I64, _F64, int]:
    """Validated int64 labels and float64 scores with non-finite scores removed."""
    if nonfinite not in ("drop", "raise"):
        raise DfcompressError(f"nonfinite={nonfinite!r} is not supported: use 'drop' or 'raise'")
    y_raw = _to_numpy(labels, "labels")
    s_raw = _to_numpy(scores, "scores")
    if y_raw.shape[0] != s_raw.shape[0]:
        raise DfcompressError(
            f"labels and scores differ in length: {y_raw.shape[0]} labels, {s_raw.shape[0]} scores"
        )
    try:
        y_f = y_raw.astype(np.float64)
        s = s_raw.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise DfcompressError(f"labels and scores must be numeric: {e}") from e
    bad_labels = ~np.isin(y_f, (0.0, 1.0))
    if bad_labels.any():
        raise DfcompressError(
            f"labels must be 0 (real) or 1 (fake); got {y_raw[bad_labels][:5].tolist()}"
        )
    finite = np.isfinite(s)
    n_bad = int((~finite).sum())
    if n_bad and nonfinite == "raise":
        raise DfcompressError(
            f"{n_bad} of {s.shape[0]} scores are NaN or infinite "
            f"(first at index {int(np.flatnonzero(~finite)[0])}); "
            f"pass nonfinite='drop' to drop and count them"
        )
    return y_f[finite].astype(np.int64), s[finite], n_bad


def _undefined_reason(y: _I64) -> str | None:
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if y.shape[0] == 0:
        return "no samples with a finite score: AUC, EER and AP are undefined"
    if n_pos == 0:
        return f"all {n_neg} samples are real (label 0): AUC, EER and AP are undefined"
    if n_neg == 0:
        return f"all {n_pos} samples are fake (label 1): AUC, EER and AP are undefined"
    return None


def _warn_undefined(reason: str | None, n_dropped: int, warn: bool) -> None:
    if not warn:
        return
    if n_dropped:
        warnings.warn(
            f"dropped {n_dropped} NaN/infinite scores", UndefinedMetricWarning, stacklevel=3
        )
    if reason is not None:
        warnings.warn(reason, UndefinedMetricWarning, stacklevel=3)


def _average_ranks(s: _F64) -> _F64:
    """1-based ranks of ``s`` with ties given the mean of the ranks they span."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # start index of every run of equal values, and the run each position belongs to
    new_run = np.concatenate(([True], sorted_s[1:] != sorted_s[:-1]))
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate((starts[1:], [s.shape[0]]))
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty_like(s)
    ranks[order] = mean_rank[run_id]
    return ranks


def _auc(y: _I64, s: _F64) -> float:
    n_pos = int(y.sum())
    n_neg = int(y.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auc(labels: ArrayLike, scores: ArrayLike, *, nonfinite: Nonfinite = "drop") -> float:
    """Area under the ROC curve by the Mann-Whitney statistic with average ranks.

    Equals the probability that a random fake scores above a random real, ties
    counting 1/2; constant scores give 0.5. With a single class the AUC is
    undefined: the result is ``nan`` and an :class:`UndefinedMetricWarning` says why.

    Args:
        labels: 1 = fake, 0 = real.
        scores: Higher means more likely fake.
        nonfinite: ``"drop"`` NaN/infinite scores (with a warning giving the
            count) or ``"raise"`` a :class:`~dfcompress.DfcompressError`.

    Returns:
        The AUC in [0, 1], or ``nan`` when undefined.

    >>> auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    0.875
    >>> auc([1, 0, 1], [0.3, 0.3, 0.3])
    0.5
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    _warn_undefined(_undefined_reason(y), n_bad, True)
    return _auc(y, s)


class Roc(NamedTuple):
    """A full ROC curve, one point per distinct score plus the origin.

    ``thresholds[i]`` is the threshold at which ``fpr[i]``/``tpr[i]`` hold
    (fake iff ``score >= thresholds[i]``); ``thresholds[0]`` is ``+inf``.
    """

    fpr: _F64
    tpr: _F64
    thresholds: _F64


def _curve_counts(y: _I64, s: _F64) -> tuple[_F64, _F64, _F64]:
    """Cumulative (true positives, false positives, threshold) per distinct score, descending."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    last_of_run = np.concatenate((s_sorted[1:] != s_sorted[:-1], [True]))
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = np.cumsum(1.0 - y_sorted)[last_of_run]
    return tps, fps, s_sorted[last_of_run]


def _roc(y: _I64, s: _F64) -> Roc:
    n_pos = float(y.sum())
    n_neg = float(y.shape[0]) - n_pos
    tps, fps, thr = _curve_counts(y, s)
    tps = np.concatenate(([0.0], tps))
    fps = np.concatenate(([0.0], fps))
    thr = np.concatenate(([np.inf], thr))
    fpr = fps / n_neg if n_neg else np.full_like(fps, np.nan)
    tpr = tps / n_pos if n_pos else np.full_like(tps, np.nan)
    return Roc(fpr, tpr, thr)


def roc_curve(labels: ArrayLike, scores: ArrayLike, *, nonfinite: Nonfinite = "drop") -> Roc:
    """The full receiver operating characteristic: no intermediate point is dropped.

    With a single class the rate of the missing class is ``nan`` throughout.

    >>> r = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> r.fpr.tolist(), r.tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    _warn_undefined(_undefined_reason(y), n_bad, True)
    return _roc(y, s)


def _eer(y: _I64, s: _F64) -> float:
    if _undefined_reason(y) is not None:
        return math.nan
    roc = _roc(y, s)
    d = roc.fpr - (1.0 - roc.tpr)  # FPR - FNR: -1 at the origin, +1 at (1, 1), non-decreasing
    i = int(np.flatnonzero(d >= 0.0)[0])
    if d[i] == 0.0 or i == 0:
        return float(roc.fpr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(roc.fpr[i - 1] + t * (roc.fpr[i] - roc.fpr[i - 1]))


def eer(labels: ArrayLike, scores: ArrayLike, *, nonfinite: Nonfinite = "drop") -> float:
    """Equal error rate: where the false negative rate equals the false positive rate.

    The crossing is interpolated linearly between the two ROC points that
    bracket it, on the full curve. ``nan`` (with a warning) for a single class.

    >>> eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    0.0
    >>> eer([0, 1], [0.5, 0.5])
    0.5
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    _warn_undefined(_undefined_reason(y), n_bad, True)
    return _eer(y, s)


def _ap(y: _I64, s: _F64) -> float:
    if _undefined_reason(y) is not None:
        return math.nan
    tps, fps, _ = _curve_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    d_recall = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(d_recall * precision))


def average_precision(
    labels: ArrayLike, scores: ArrayLike, *, nonfinite: Nonfinite = "drop"
) -> float:
    """Average precision: sum over thresholds of (recall step) x precision.

    Thresholds are the distinct scores, so tied samples enter together (no
    interpolation of the precision-recall curve). ``nan`` for a single class.

    >>> round(average_precision([1, 0, 1], [0.9, 0.8, 0.7]), 4)
    0.8333
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    _warn_undefined(_undefined_reason(y), n_bad, True)
    return _ap(y, s)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Confusion:
    """Counts and rates at one threshold (fake iff ``score > threshold``).

    A rate whose denominator is zero is ``None`` (rendered ``"n/a"`` by
    :func:`fmt`), never 0: e.g. ``precision`` when nothing is called fake.

    Attributes:
        threshold: The decision threshold.
        tp: Fakes called fake. tn: reals called real. fp: reals called fake.
            fn: fakes called real.
        precision: tp / (tp + fp).
        recall: tp / (tp + fn), the true positive rate.
        f1: 2 tp / (2 tp + fp + fn).
        accuracy: (tp + tn) / n.
    """

    threshold: float
    tp: int
    tn: int
    fp: int
    fn: int
    precision: float | None = field(init=False)
    recall: float | None = field(init=False)
    f1: float | None = field(init=False)
    accuracy: float | None = field(init=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise DfcompressError(f"threshold={self.threshold} must be a finite number")
        for name in ("tp", "tn", "fp", "fn"):
            v = getattr(self, name)
            if v < 0:
                raise DfcompressError(f"{name}={v} must be a non-negative count")
        tp, tn, fp, fn = self.tp, self.tn, self.fp, self.fn
        object.__setattr__(self, "precision", _ratio(tp, tp + fp))
        object.__setattr__(self, "recall", _ratio(tp, tp + fn))
        object.__setattr__(self, "f1", _ratio(2 * tp, 2 * tp + fp + fn))
        object.__setattr__(self, "accuracy", _ratio(tp + tn, tp + tn + fp + fn))

    @property
    def n(self) -> int:
        """Number of samples counted."""
        return self.tp + self.tn + self.fp + self.fn

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain values for JSON (``None`` where a rate is n/a)."""
        return {
            "threshold": self.threshold,
            "tp": self.tp,
            "tn": self.tn,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "accuracy": self.accuracy,
        }


def _confusion(y: _I64, s: _F64, threshold: float) -> Confusion:
    pred = s > threshold
    pos = y == 1
    return Confusion(
        threshold=float(threshold),
        tp=int((pred & pos).sum()),
        tn=int((~pred & ~pos).sum()),
        fp=int((pred & ~pos).sum()),
        fn=int((~pred & pos).sum()),
    )


def confusion(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    *,
    nonfinite: Nonfinite = "drop",
) -> Confusion:
    """Confusion counts and rates at ``threshold`` (fake iff ``score > threshold``).

    >>> c = confusion([0, 0, 1, 1], [0.2, 0.7, 0.9, 0.5])
    >>> (c.tp, c.tn, c.fp, c.fn), c.precision, c.accuracy
    ((1, 1, 1, 1), 0.5, 0.5)
    >>> confusion([0, 0], [0.1, 0.2]).precision is None
    True
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    _warn_undefined(None, n_bad, True)
    return _confusion(y, s, threshold)


@dataclass(frozen=True)
class Metrics:
    """All frame- (or video-) level metrics of one variant.

    Attributes:
        auc: ROC AUC, ``nan`` when undefined (see ``notes``).
        eer: Equal error rate, ``nan`` when undefined.
        ap: Average precision, ``nan`` when undefined.
        confusion: Counts and rates at the threshold.
        n_samples: Samples used (after dropping non-finite scores).
        n_dropped: Samples dropped because their score was NaN or infinite.
        notes: Human-readable reasons for undefined values and dropped samples.
    """

    auc: float
    eer: float
    ap: float
    confusion: Confusion
    n_samples: int
    n_dropped: int = 0
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON: undefined numbers become ``None``."""

        def num(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "auc": num(self.auc),
            "eer": num(self.eer),
            "ap": num(self.ap),
            "confusion": self.confusion.as_dict(),
            "n_samples": self.n_samples,
            "n_dropped": self.n_dropped,
            "notes": list(self.notes),
        }


def summarize(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    threshold: float = 0.5,
    nonfinite: Nonfinite = "drop",
) -> Metrics:
    """AUC, EER, AP and the confusion at ``threshold`` in one :class:`Metrics`.

    No warning is emitted: undefined values and dropped scores are explained
    in :attr:`Metrics.notes`.

    >>> m = summarize([0, 1, 1], [0.2, float("nan"), 0.9])
    >>> m.auc, m.n_samples, m.n_dropped
    (1.0, 2, 1)
    >>> summarize([1, 1], [0.3, 0.8]).notes
    ('all 2 samples are fake (label 1): AUC, EER and AP are undefined',)
    """
    y, s, n_bad = _clean(labels, scores, nonfinite)
    notes: list[str] = []
    if n_bad:
        notes.append(f"dropped {n_bad} NaN/infinite scores")
    reason = _undefined_reason(y)
    if reason is not None:
        notes.append(reason)
    return Metrics(
        auc=_auc(y, s),
        eer=_eer(y, s),
        ap=_ap(y, s),
        confusion=_confusion(y, s, threshold),
        n_samples=int(y.shape[0]),
        n_dropped=n_bad,
        notes=tuple(notes),
    )


def fmt(value: float | int | None, digits: int = 4) -> str:
    """Render a metric for a table: ``None`` and NaN become ``"n/a"``.

    >>> fmt(None), fmt(float("nan")), fmt(0.912345), fmt(7)
    ('n/a', 'n/a', '0.9123', '7')
    """
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"
