"""Per-layer amounts from sensitivity curves."""

from __future__ import annotations

from collections.abc import Sequence

from dfcompress.errors import DfcompressError

__all__ = ["allocate_budget", "allocate_threshold", "monotone_losses"]


def monotone_losses(baseline: float, scores: Sequence[float]) -> list[float]:
    """Score drops from ``baseline``, clipped at 0 and made non-decreasing in the amount.

    Pruning more is never assumed to help: a noisy curve that recovers at a
    larger amount keeps the worst drop seen at any smaller amount.
    """
    out: list[float] = []
    worst = 0.0
    for s in scores:
        worst = max(worst, baseline - s, 0.0)
        out.append(worst)
    return out


def allocate_budget(
    params: Sequence[int],
    grid: Sequence[float],
    losses: Sequence[Sequence[float]],
    target: float,
) -> list[float]:
    """Amounts whose parameter-weighted mean is ``target`` (to one weight), least total loss.

    Greedy: start from nothing pruned; repeatedly take the step (one layer, from
    its current grid amount to any larger one) with the least loss per pruned
    weight, until the budget ``round(target * sum(params))`` is reached. The
    final step is cut short, so one layer may get an amount between grid points.
    A layer whose ``losses`` are shorter than ``grid`` is never raised past
    the last amount it has a loss for.

    >>> allocate_budget([100, 100], [0.5, 0.9], [[0.0, 0.1], [0.5, 0.9]], 0.45)
    [0.9, 0.0]
    """
    total = sum(params)
    budget = round(target * total)
    # a curve shorter than the grid (a scan stopped early) ends where it was measured
    counts = [
        [0] + [round(a * n) for a in grid[: len(ls)]] for n, ls in zip(params, losses, strict=True)
    ]
    reach = sum(c[-1] for c in counts)
    if budget > reach:
        raise DfcompressError(
            f"target={target!r} cannot be met: pruning every layer to its largest scanned "
            f"amount removes {reach / max(total, 1):.3f} of the weights; lower the target, "
            "scan larger amounts or lower stop_below"
        )
    curves = [[0.0, *ls] for ls in losses]
    level = [0] * len(params)
    pruned = 0
    while pruned < budget:
        best: tuple[float, float, int, int] | None = None
        for i, (c, lo) in enumerate(zip(counts, curves, strict=False)):
            g0 = level[i]
            for g in range(g0 + 1, len(c)):
                gain = c[g] - c[g0]
                if gain <= 0:
                    continue
                cost = (lo[g] - lo[g0]) / gain
                key = (cost, -gain, i, g)
                if best is None or key < best:
                    best = key
        if best is None:  # pragma: no cover - excluded by the reach check
            break
        _, _, i, g = best
        gain = counts[i][g] - counts[i][level[i]]
        if pruned + gain >= budget:
            final = counts[i][level[i]] + (budget - pruned)
            amounts = [counts[j][level[j]] / params[j] for j in range(len(params))]
            amounts[i] = final / params[i]
            return amounts
        pruned += gain
        level[i] = g
    return [counts[j][level[j]] / params[j] if params[j] else 0.0 for j in range(len(params))]


def allocate_threshold(
    grid: Sequence[float], scores: Sequence[Sequence[float]], base: float, threshold: float
) -> list[float]:
    """The study's rule: ``base``, raised to the largest amount still scoring >= threshold.

    A layer's amount is raised only through an unbroken run of grid amounts that
    all meet the threshold.

    >>> allocate_threshold([0.2, 0.5, 0.8], [[1.0, 0.99, 0.5], [0.9, 0.9, 0.9]], 0.2, 0.95)
    [0.5, 0.2]
    """
    out = []
    for sc in scores:
        chosen = base
        for a, s in zip(grid, sc, strict=False):
            if s < threshold:
                break
            chosen = max(chosen, a)
        out.append(chosen)
    return out
