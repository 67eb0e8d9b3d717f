"""Iterative pruning: schedules, fine-tuning between steps, BatchNorm re-estimation.

A schedule is a plain callable ``(step, steps, target) -> amount`` giving the
cumulative fraction to have pruned after ``step`` of ``steps`` (steps count
from 1, and the last step reaches ``target``). Any function with that
signature works; :func:`linear` and :func:`cubic` (the AGP schedule of Zhu &
Gupta, which prunes fast while the network is redundant and slowly near the
end) are provided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfcompress._calibration import calibration_inputs
from dfcompress.errors import DfcompressError

__all__ = ["Finetune", "Schedule", "cubic", "linear", "reestimate_bn", "run_schedule"]

Schedule = Callable[[int, int, float], float]
"""``(step, steps, target) -> cumulative amount after step``."""

Finetune = Callable[[nn.Module, int], Any]
"""``finetune(model, step)``: train the partly pruned model in place between steps."""


def _check(step: int, steps: int, target: float) -> None:
    if steps < 1 or not 1 <= step <= steps:
        raise DfcompressError(f"step={step} of steps={steps} is invalid: use 1 <= step <= steps")


def linear(step: int, steps: int, target: float) -> float:
    """Equal increments: ``target * step / steps``.

    >>> [linear(s, 4, 0.8) for s in (1, 2, 3, 4)]
    [0.2, 0.4, 0.6000000000000001, 0.8]
    """
    _check(step, steps, target)
    return target * step / steps


def cubic(step: int, steps: int, target: float) -> float:
    """Automated gradual pruning: ``target * (1 - (1 - step / steps) ** 3)``.

    >>> [round(cubic(s, 4, 0.8), 4) for s in (1, 2, 3, 4)]
    [0.4625, 0.7, 0.7875, 0.8]
    """
    _check(step, steps, target)
    return target * (1.0 - (1.0 - step / steps) ** 3)


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, data: Iterable[Any] | torch.Tensor, *, max_samples: int = 256
) -> nn.Module:
    """Recompute BatchNorm running statistics on ``data``, in place.

    Pruning shifts the statistics of every activation downstream; the running
    mean and variance recorded on the dense model then mis-normalize. This
    resets them and averages over up to ``max_samples`` samples (cumulative
    average, momentum ``None``), then restores each module's train/eval mode.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    >>> _ = reestimate_bn(net, torch.randn(8, 3, 4, 4) + 5)
    >>> bool(net[1].running_mean.abs().sum() > 0), net.training
    (True, False)
    """
    bns: list[_BatchNorm] = [
        m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return model
    inputs = calibration_inputs(data, limit=max_samples, name="data") or []
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    for x in inputs:
        model(x.to(device))
        seen += x.shape[0]
    for bn, mom in zip(bns, momenta, strict=False):
        bn.momentum = mom
    for m, mode in modes.items():
        m.training = mode
    if seen == 0:
        raise DfcompressError("BatchNorm re-estimation got no batch from the calibration data")
    return model


def run_schedule(
    model: nn.Module,
    prune_to: Callable[[nn.Module, float], nn.Module],
    target: float,
    *,
    steps: int = 1,
    schedule: Schedule | None = None,
    finetune: Finetune | None = None,
    bn_data: Iterable[Any] | torch.Tensor | None = None,
    progress: bool = True,
) -> nn.Module:
    """Prune ``model`` to ``target`` in ``steps`` steps, fine-tuning in between.

    ``prune_to(model, amount)`` prunes in place to the cumulative ``amount`` and
    returns the model (it may return a new module, for structured pruning).
    After each step BatchNorm statistics are re-estimated on ``bn_data`` (when
    given), then ``finetune(model, step)`` runs.

    >>> from torch import nn
    >>> from dfcompress.prune.unstructured import l1_unstructured, sparsity
    >>> seen = []
    >>> net = run_schedule(nn.Linear(10, 10),
    ...                    lambda m, a: l1_unstructured(m, a, keep_masks=True, inplace=True),
    ...                    0.5, steps=2, finetune=lambda m, s: seen.append(sparsity(m)),
    ...                    progress=False)
    >>> seen
    [0.25, 0.5]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DfcompressError(f"steps={steps!r} is invalid: use an integer >= 1")
    sched = schedule if schedule is not None else linear
    if not callable(sched):
        raise DfcompressError(
            f"schedule={schedule!r} is not callable: give a function (step, steps, target) "
            "-> amount such as dfcompress.prune.linear or cubic"
        )
    from tqdm.auto import tqdm

    bar = tqdm(range(1, steps + 1), desc="prune", disable=not progress or steps == 1)
    for step in bar:
        amount = float(sched(step, steps, target))
        if not 0.0 <= amount < 1.0:
            raise DfcompressError(
                f"schedule gave amount={amount!r} at step {step}/{steps}: use fractions in [0, 1)"
            )
        model = prune_to(model, amount)
        if bn_data is not None:
            reestimate_bn(model, bn_data)
        if finetune is not None:
            finetune(model, step)
    return model
