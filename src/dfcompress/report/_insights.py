"""The performance summary and the key insights, from plain numbers (no models).

Kept apart from evaluation so the rules (ties, a variant better than the
baseline, undefined AUC) can be checked on hand-made figures.

A variant is called better or worse than the baseline only when the confidence
interval of its AUC difference (DeLong, paired on the same samples) excludes 0: on a
few hundred samples a few thousandths of AUC are noise, and said to be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import fmt

__all__ = ["Status", "SummaryRow", "key_insights", "summary_rows"]

Status = Literal["Baseline", "Stable", "Degraded", "n/a"]
_TIE = 1e-12


@dataclass(frozen=True)
class SummaryRow:
    """One row of the performance summary.

    Attributes:
        name: Variant name.
        size_bytes: Serialized size (the file :func:`dfcompress.save` writes).
        reduction_pct: ``100 * (1 - size / baseline size)``.
        auc: ROC AUC (``nan`` when undefined).
        diff: ``auc - baseline auc`` (``nan`` when either is undefined; 0 for the baseline).
        status: ``"Baseline"``, ``"Stable"`` (``diff >= -tolerance``), ``"Degraded"`` or ``"n/a"``.
        auc_low: Lower end of the AUC's confidence interval (``nan`` if not given).
        auc_high: Upper end of the AUC's confidence interval.
        diff_low: Lower end of the interval of ``diff`` (paired; ``nan`` if not given).
        diff_high: Upper end of the interval of ``diff``.
        speedup: Baseline latency / this variant's latency (``nan`` if not measured).
    """

    name: str
    size_bytes: int
    reduction_pct: float
    auc: float
    diff: float
    status: Status
    auc_low: float = math.nan
    auc_high: float = math.nan
    diff_low: float = math.nan
    diff_high: float = math.nan
    speedup: float = math.nan

    @property
    def significant(self) -> bool:
        """Whether the interval of ``diff`` excludes 0."""
        return self.diff_low > 0.0 or self.diff_high < 0.0

    @property
    def size_mb(self) -> float:
        """Size in MB (10^6 bytes)."""
        return self.size_bytes / 1e6


def summary_rows(
    names: Sequence[str],
    sizes: Sequence[int],
    aucs: Sequence[float],
    baseline: str,
    tolerance: float = 0.01,
    *,
    intervals: Sequence[tuple[float, float]] | None = None,
    diff_intervals: Sequence[tuple[float, float]] | None = None,
    latencies: Sequence[float | None] | None = None,
) -> list[SummaryRow]:
    """One :class:`SummaryRow` per variant, in the given order.

    ``intervals`` (of each AUC), ``diff_intervals`` (of each AUC difference against the
    baseline, paired) and ``latencies`` (per image, any unit) are optional, one per
    variant; the speed-up is the baseline's latency over the variant's.

    >>> rows = summary_rows(["b", "q8"], [400, 100], [0.95, 0.90], "b")
    >>> rows[1].reduction_pct, round(rows[1].diff, 2), rows[1].status
    (75.0, -0.05, 'Degraded')
    """
    if not (len(names) == len(sizes) == len(aucs)):
        raise DfcompressError(
            f"names, sizes and aucs differ in length: {len(names)}, {len(sizes)}, {len(aucs)}"
        )
    if baseline not in names:
        raise DfcompressError(f"baseline {baseline!r} is not one of the variants {list(names)}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise DfcompressError(f"tolerance={tolerance} is invalid: use a finite value >= 0")
    for what, seq in (("intervals", intervals), ("diff_intervals", diff_intervals)):
        if seq is not None and len(seq) != len(names):
            raise DfcompressError(f"{what} has {len(seq)} entries for {len(names)} variants")
    if latencies is not None and len(latencies) != len(names):
        raise DfcompressError(f"latencies has {len(latencies)} entries for {len(names)} variants")
    nan2 = (math.nan, math.nan)
    b = list(names).index(baseline)
    base_size, base_auc = sizes[b], float(aucs[b])
    base_lat = latencies[b] if latencies is not None else None
    rows = []
    for i, (name, size, a) in enumerate(zip(names, sizes, aucs, strict=True)):
        a = float(a)
        reduction = 100.0 * (1.0 - size / base_size) if base_size else math.nan
        diff = a - base_auc
        status: Status
        if name == baseline:
            status, diff = "Baseline", (0.0 if math.isfinite(a) else math.nan)
        elif not math.isfinite(diff):
            status = "n/a"
        else:
            status = "Stable" if diff >= -tolerance - _TIE else "Degraded"
        lo, hi = intervals[i] if intervals is not None else nan2
        dlo, dhi = diff_intervals[i] if diff_intervals is not None else nan2
        if name == baseline:
            dlo, dhi = nan2
        lat = latencies[i] if latencies is not None else None
        speedup = base_lat / lat if base_lat and lat and lat > 0 else math.nan
        rows.append(
            SummaryRow(
                name,
                int(size),
                reduction,
                a,
                diff,
                status,
                float(lo),
                float(hi),
                float(dlo),
                float(dhi),
                speedup,
            )
        )
    return rows


def _ci(low: float, high: float) -> str:
    return f"{low:+.4f}..{high:+.4f}"


def _names(rows: Sequence[SummaryRow]) -> str:
    return ", ".join(r.name for r in rows)


def _tied(rows: Sequence[SummaryRow], key: str, best: float) -> list[SummaryRow]:
    return [r for r in rows if abs(float(getattr(r, key)) - best) <= _TIE]


def key_insights(
    rows: Sequence[SummaryRow],
    tolerance: float = 0.01,
    *,
    undefined_reason: str | None = None,
) -> list[str]:
    """Plain-text key insights: highest AUC, best compression within tolerance, largest drop.

    Ties name every tied variant; a variant above the baseline is called out;
    when no AUC is defined (single-class data) the reason is given instead.

    >>> rows = summary_rows(["base", "q16", "q8"], [4e6, 2e6, 1e6], [0.9, 0.9, 0.8], "base")
    >>> for line in key_insights(rows): print(line)
    Highest AUC: base, q16 (0.9000, tied).
    Best compression within 0.01 AUC of the baseline: q16 (2.000 MB, 50.0% smaller, AUC 0.9000).
    Largest drop: q8 (-0.1000 AUC, to 0.8000).
    """
    base = [r for r in rows if r.status == "Baseline"]
    if not base:
        raise DfcompressError("the rows have no baseline row: build them with summary_rows")
    defined = [r for r in rows if math.isfinite(r.auc)]
    if not defined:
        why = f": {undefined_reason}" if undefined_reason else ""
        return [f"AUC is undefined for every variant{why}."]
    out: list[str] = []
    best_auc = max(r.auc for r in defined)
    top = _tied(defined, "auc", best_auc)
    tie = ", tied" if len(top) > 1 else ""
    out.append(f"Highest AUC: {_names(top)} ({best_auc:.4f}{tie}).")
    others = [r for r in rows if r.status != "Baseline"]
    above = [r for r in others if math.isfinite(r.diff) and r.diff > _TIE]
    better = [r for r in above if r.diff_low > 0.0]
    if better:
        lead = max(better, key=lambda r: r.diff)
        out.append(
            f"Better than the baseline: {_names(better)} (up to {lead.diff:+.4f} AUC, "
            f"{lead.name}; 95% CI of the difference {_ci(lead.diff_low, lead.diff_high)})."
        )
    noise = [r for r in above if r not in better]
    if noise:
        out.append(
            f"Above the baseline within noise: {_names(noise)} (the confidence interval of "
            + (
                "each difference includes 0)."
                if any(math.isfinite(r.diff_low) for r in noise)
                else "the difference was not computed, so no variant is called better)."
            )
        )
    worse = [r for r in others if r.diff_high < 0.0]
    if worse:
        out.append(
            f"Worse than the baseline beyond noise: {_names(worse)} (95% CI of the difference "
            "entirely below 0)."
        )
    if not math.isfinite(base[0].auc):
        out.append("The baseline's AUC is undefined, so no variant can be judged against it.")
        return out
    base_size = base[0].size_bytes
    stable = [r for r in others if r.status == "Stable" and r.size_bytes < base_size]
    if stable:
        smallest = min(r.size_bytes for r in stable)
        best = [r for r in stable if r.size_bytes == smallest]
        r0 = max(best, key=lambda r: r.auc)
        out.append(
            f"Best compression within {tolerance:g} AUC of the baseline: {_names(best)} "
            f"({r0.size_mb:.3f} MB, {r0.reduction_pct:.1f}% smaller, AUC {r0.auc:.4f}"
            + (f", {r0.speedup:.2f}x the baseline's speed" if math.isfinite(r0.speedup) else "")
            + (", tied in size)." if len(best) > 1 else ").")
        )
    elif any(r.status == "Stable" for r in others):
        out.append(
            f"No variant within {tolerance:g} AUC of the baseline is smaller than the baseline."
        )
    elif others:
        out.append(f"No variant stays within {tolerance:g} AUC of the baseline.")
    judged = [r for r in others if math.isfinite(r.diff)]
    if judged:
        worst = min(r.diff for r in judged)
        if worst >= -_TIE:
            out.append("No variant lost AUC against the baseline.")
        else:
            drop = _tied(judged, "diff", worst)
            tie = ", tied" if len(drop) > 1 else ""
            out.append(
                f"Largest drop: {_names(drop)} ({worst:+.4f} AUC, to {drop[0].auc:.4f}{tie})."
            )
    timed = [r for r in others if math.isfinite(r.speedup)]
    if timed:
        fast = max(timed, key=lambda r: r.speedup)
        slow = [r for r in timed if r.speedup < 1.0]
        if fast.speedup > 1.0:
            line = (
                f"Fastest: {fast.name} ({fast.speedup:.2f}x the baseline's speed, "
                f"AUC {fmt(fast.auc)})"
            )
            if slow:
                line += f"; slower than the baseline: {_names(slow)}"
        else:
            line = f"No variant is faster than the baseline; slower: {_names(slow)}"
        out.append(line + ".")
    undefined = [r for r in others if not math.isfinite(r.auc)]
    if undefined:
        why = f": {undefined_reason}" if undefined_reason else ""
        out.append(f"AUC undefined for {_names(undefined)}{why}.")
    return out
