"""One layer's sensitivity curve: the network's score with the layer L1-pruned at each amount.

:func:`layer_curve` measures every amount in order. :func:`quick_curve` gives
the same curve for fewer passes: it measures the largest amount first and

- a layer whose pruning there changes the score by less than ``1e-6`` is
  clearly free: every smaller amount scores the same (one pass, not one per
  amount);
- once a layer's score falls by half the baseline or more (clearly harmful),
  the amounts between that one and the largest are interpolated linearly
  between the two measured scores instead of measured. The allocation never
  prunes such a layer that far unless the target forces it, so these
  estimates do not change what it chooses.

:func:`fold_for_scan` folds each BatchNorm into the scanned conv before it,
which removes its cost from every pass. L1 order still comes from the
unfolded weights (the pruning itself applies to them): zeroing weight ``i``
of the folded conv is zeroing it in the original.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dfcompress.prune._scores import Metric, output_tensors, score_outputs

__all__ = ["NO_EFFECT", "fold_for_scan", "layer_curve", "quick_curve"]

NO_EFFECT = 1e-6  # a score change this small is no change
_HARMFUL = 0.5  # a drop of this share of the baseline score is clearly harmful


def _pruned_at(w: torch.Tensor, order: torch.Tensor, amount: float) -> torch.Tensor:
    pruned = w.flatten().clone()
    pruned[order[: round(amount * w.numel())]] = 0
    return pruned.view_as(w)


def _l1_order(weight: torch.Tensor, order_by: torch.Tensor | None) -> torch.Tensor:
    source = weight if order_by is None else order_by
    return torch.sort(source.detach().abs().flatten(), stable=True).indices


def layer_curve(
    weight: torch.Tensor,
    forward: Callable[[], Any],
    reference: Sequence[torch.Tensor],
    score_fn: Metric,
    grid: Sequence[float],
    stop_below: float | None,
    *,
    order_by: torch.Tensor | None = None,
) -> list[float]:
    """Scores of ``forward()`` with ``weight`` L1-pruned at each amount (restored after).

    ``reference`` holds the unpruned model's output tensors (:func:`output_tensors`);
    each score is the worst over the outputs (:func:`score_outputs`). ``order_by``
    (same shape) ranks the weights instead of ``weight`` itself.
    """
    w = weight.detach().clone()
    order = _l1_order(w, order_by)
    scores: list[float] = []
    try:
        for a in grid:
            weight.copy_(_pruned_at(w, order, a))
            scores.append(score_outputs(score_fn, output_tensors(forward()), reference))
            if stop_below is not None and scores[-1] < stop_below:
                break
    finally:
        weight.copy_(w)
    return scores


def quick_curve(
    weight: torch.Tensor,
    forward: Callable[[], Any],
    reference: Sequence[torch.Tensor],
    score_fn: Metric,
    grid: Sequence[float],
    stop_below: float | None,
    *,
    baseline: float,
    order_by: torch.Tensor | None = None,
) -> tuple[list[float], tuple[float, ...]]:
    """:func:`layer_curve` stopping early on clearly free or clearly harmful layers.

    Returns:
        The scores, and the amounts whose score was estimated, not measured.
    """
    w = weight.detach().clone()
    order = _l1_order(w, order_by)

    def measure(a: float) -> float:
        weight.copy_(_pruned_at(w, order, a))
        return score_outputs(score_fn, output_tensors(forward()), reference)

    try:
        top = measure(grid[-1])
        if abs(baseline - top) < NO_EFFECT:
            return [top] * len(grid), tuple(grid[:-1])
        scores: list[float] = []
        for i, a in enumerate(grid[:-1]):
            s = measure(a)
            scores.append(s)
            if stop_below is not None and s < stop_below:
                return scores, ()
            if baseline - s >= _HARMFUL * abs(baseline) and i < len(grid) - 2:
                span = grid[-1] - a
                rest = grid[i + 1 : -1]
                scores += [min(s, s + (top - s) * (b - a) / span) for b in rest]
                return [*scores, top], tuple(rest)
    finally:
        weight.copy_(w)
    return [*scores, top], ()


def fold_for_scan(model: nn.Module, convs: set[str]) -> None:
    """Fold the BatchNorm after each of ``convs`` into it, in place, without a log line."""
    from dfcompress.quant._bnfold import fold_batchnorms

    log = logging.getLogger("dfcompress")
    level = log.level
    log.setLevel(logging.WARNING)  # the scan's own folding is no news to the user
    try:
        fold_batchnorms(model, convs)
    finally:
        log.setLevel(level)
