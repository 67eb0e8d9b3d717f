"""Confidence intervals of AUCs by DeLong's method, in O(n log n).

DeLong, DeLong and Clarke-Pearson (1988) estimate the variance of an AUC (and the
covariance of AUCs measured on the same samples) from the *placement values* of each
sample: the fraction of the other class it outranks. Sun and Xu (2014) compute them
from three sorts (midranks of all scores, of the fakes, of the reals), so the cost is
that of sorting. Two detectors scored on the same samples give a paired difference
whose variance includes their covariance: that is what says whether +0.002 AUC on 400
samples is a difference or noise.

Label 1 = fake; ties count 1/2, as in :func:`~dfcompress.evaluate.metrics.auc`.

>>> iv = auc_interval([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
>>> round(iv.auc, 4), iv.low <= iv.auc <= iv.high
(0.8889, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from dfcompress.errors import DfcompressError

__all__ = ["AucInterval", "auc_difference", "auc_interval", "delong_covariance", "midranks"]


@dataclass(frozen=True)
class AucInterval:
    """An AUC (or a difference of two paired AUCs) with its DeLong confidence interval.

    Attributes:
        auc: The estimate (for a difference: ``auc(b) - auc(a)``).
        variance: DeLong's variance of the estimate (``nan`` with fewer than two
            samples of a class).
        low: Lower end of the interval (an AUC's is clipped to [0, 1]).
        high: Upper end.
        level: The confidence level, e.g. 0.95.
    """

    auc: float
    variance: float
    low: float
    high: float
    level: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (a difference is significant)."""
        return (self.low > 0.0 or self.high < 0.0) and math.isfinite(self.variance)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures (``nan`` as None)."""

        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "value": num(self.auc),
            "variance": num(self.variance),
            "low": num(self.low),
            "high": num(self.high),
            "level": self.level,
        }


def midranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks of ``x`` with ties given their average rank.

    >>> midranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    # start index of each run of equal values, and its length
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    lengths = np.diff(np.r_[starts, n])
    ranks_sorted = np.repeat(starts + (lengths + 1) / 2.0, lengths)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def _inputs(labels: Any, scores: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != y.shape[0]:
        raise DfcompressError(
            f"scores have shape {tuple(np.shape(scores))} but there are {y.shape[0]} labels"
        )
    if not np.isin(y, (0, 1)).all():
        raise DfcompressError(
            f"labels must be 0 (real) or 1 (fake); got {sorted(set(y.tolist()))[:5]}"
        )
    keep = np.isfinite(s).all(axis=0)  # paired: a sample counts only if every score is finite
    s = s[:, keep]
    y = y[keep]
    return s[:, y == 1], s[:, y == 0]


def delong_covariance(
    labels: Any, scores: Any
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """AUCs of ``k`` score vectors on the same samples and DeLong's ``k x k`` covariance.

    Args:
        labels: ``n`` labels (1 = fake).
        scores: ``[k, n]`` (or ``[n]``) scores; samples with a non-finite score in any
            row are dropped from all rows.

    Returns:
        ``(aucs [k], covariance [k, k])``; ``nan`` where a class is missing (AUC) or has
        fewer than two samples (covariance).
    """
    pos, neg = _inputs(labels, scores)
    k, m = pos.shape
    n = neg.shape[1]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tz = midranks(np.concatenate([pos[r], neg[r]]))
        tx, ty = midranks(pos[r]), midranks(neg[r])
        v10[r] = (tz[:m] - tx) / n  # fraction of reals each fake outranks
        v01[r] = 1.0 - (tz[m:] - ty) / m  # fraction of fakes that outrank each real
    aucs = v10.mean(axis=1)
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def _z(level: float) -> float:
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise DfcompressError(f"level={level!r} is out of range: use a float in (0, 1), e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def auc_interval(labels: Any, scores: Any, level: float = 0.95) -> AucInterval:
    """The AUC of ``scores`` with its DeLong confidence interval (clipped to [0, 1])."""
    z = _z(level)
    aucs, cov = delong_covariance(labels, scores)
    a, var = float(aucs[0]), float(cov[0, 0])
    half = z * math.sqrt(var) if var >= 0 else math.nan
    return AucInterval(a, var, max(0.0, a - half), min(1.0, a + half), level)


def auc_difference(labels: Any, base: Any, other: Any, level: float = 0.95) -> AucInterval:
    """``auc(other) - auc(base)`` on the same samples, with its paired DeLong interval.

    >>> y = [0, 0, 0, 1, 1, 1]
    >>> d = auc_difference(y, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    >>> d.auc, d.excludes_zero
    (0.0, False)
    """
    z = _z(level)
    aucs, cov = delong_covariance(labels, np.stack([np.asarray(base), np.asarray(other)]))
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    var = max(var, 0.0) if math.isfinite(var) else math.nan
    half = z * math.sqrt(var)
    return AucInterval(diff, var, diff - half, diff + half, level)
