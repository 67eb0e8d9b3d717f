"""The ``prune`` verb."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from dfcompress.distributed.executor import Executor
from dfcompress.prune._targets import AmountSpec, Select
from dfcompress.prune.pruner import Method, PruneConfig, Pruner
from dfcompress.prune.schedule import Finetune, Schedule
from dfcompress.prune.sensitivity import Metric, Strategy
from dfcompress.prune.unstructured import Scope
from dfcompress.select import SelectorLike

__all__ = ["prune"]


def prune(
    model: nn.Module,
    amount: AmountSpec = 0.5,
    *,
    method: Method = "l1",
    scope: Scope = "global",
    sensitivity: bool = False,
    strategy: Strategy = "budget",
    calibration: Iterable[Any] | torch.Tensor | None = None,
    metric: Metric | None = None,
    steps: int = 1,
    schedule: Schedule | None = None,
    finetune: Finetune | None = None,
    select: Select | None = None,
    importance: Literal["l1", "l2", "taylor"] = "l1",
    ignore: SelectorLike | None = "head",
    recalibrate_bn: bool = False,
    inplace: bool = False,
    progress: bool = True,
    example_inputs: torch.Tensor | None = None,
    executor: Executor = None,
) -> nn.Module:
    """Prune a model: unstructured L1 (optionally sensitivity-allocated) or structured channels.

    Args:
        model: The model; never modified unless ``inplace=True``.
        amount: Fraction in [0, 1) of weights (``"l1"``) or channels
            (``"structured"``) to remove, or ``{selector: fraction}`` such as
            ``{"conv": 0.2, "linear": 0.2}``.
        method: ``"l1"`` (zeroes weights; the saved file shrinks through sparse
            storage) or ``"structured"`` (removes channels; params, MACs and
            latency drop).
        scope: ``"global"`` (one magnitude threshold per group) or ``"local"``.
        sensitivity: Scan each layer's sensitivity and allocate per-layer
            amounts whose parameter-weighted mean is ``amount``. Works without
            data (inputs are synthesized from the model).
        strategy: Allocation rule: ``"budget"`` or ``"threshold"`` (base 0.2,
            raised while the score stays >= 0.99).
        calibration: Loader or tensor for the scan, Taylor importance and
            BatchNorm re-estimation.
        metric: ``metric(output, reference) -> float`` for the scan (default:
            cosine agreement with the unpruned model).
        steps: Prune in this many steps, following ``schedule``.
        schedule: ``(step, steps, target) -> amount`` (default linear).
        finetune: ``finetune(model, step)`` called after each step.
        select: Candidate layers (default: every non-binary conv/linear).
        importance: Channel importance for ``"structured"``.
        ignore: Layers ``"structured"`` keeps whole (default: the head).
        recalibrate_bn: Re-estimate BatchNorm statistics on ``calibration`` after each step.
        inplace: Modify ``model`` itself.
        progress: Show progress bars.
        example_inputs: A batch for tracing (structured) or the input shape (scan).
        executor: Where the sensitivity scan runs: ``None`` (this process),
            ``"ray"`` or a :class:`~dfcompress.distributed.RayExecutor` (same
            allocation; see :doc:`/scaleout`).

    Returns:
        The pruned model.

    Raises:
        DfcompressError: For an amount outside [0, 1), an unknown method,
            scope, strategy or importance, or a graph that cannot be pruned.

    >>> import torch
    >>> from torch import nn
    >>> from dfcompress.prune import sparsity
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    >>> sparsity(prune(net, 0.5, progress=False))
    0.5
    >>> sparsity(prune(net, 0.5, sensitivity=True, progress=False))  # data-free
    0.5
    >>> prune(net, 0.5, method="structured", progress=False)[0].out_channels
    4
    """
    config = PruneConfig(
        amount=amount,
        method=method,
        scope=scope,
        sensitivity=sensitivity,
        strategy=strategy,
        steps=steps,
        schedule=schedule,
        select=select,
        importance=importance,
        ignore=ignore,
        recalibrate_bn=recalibrate_bn,
    )
    return Pruner(config).apply(
        model,
        calibration=calibration,
        metric=metric,
        finetune=finetune,
        example_inputs=example_inputs,
        inplace=inplace,
        progress=progress,
        executor=executor,
    )
