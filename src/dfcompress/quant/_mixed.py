"""Mixed precision from a sensitivity measure: 4-bit weights where the model can take them.

``quantize(model, "int4-mixed", calibration=...)`` measures, for each conv and
linear layer on its own, how much the model's output changes when only that
layer's weights (BatchNorm folded) are rounded to the 4-bit config: the mean
squared change of the output over the output's variance, on a few calibration
inputs. Rounding noise of different layers adds up roughly independently, so
the layers are kept at 8 bits until the sum over the layers left at 4 bits is
within ``budget``, taken in order of noise per weight: a layer's 8 bits cost
file bytes in proportion to its weights, so a small depthwise convolution that
makes much of the noise goes first and a wide 1x1 convolution or classifier
that makes a little of it stays at 4 bits (a greedy knapsack). No name list is
involved: in a depthwise network the depthwise convolutions and the stem come
out on top by themselves. On ImageNet MobileNetV2 the order by noise alone
kept 85 % of the weights at 8 bits for the same budget, this order 45 %.

With a size limit (``Mixed(max_size=...)``) each layer's cost is the bytes its
8-bit weights add to the packed file, measured by packing that layer alone
with both configs. When the order above would overrun the limit, each layer
gets one of 8 bits, 4 bits, or 4 bits in coarser groups (fewer scales, fewer
bytes, a little more noise, scanned like the rest), chosen so that the noise
sums least within the limit (a multiple-choice knapsack by dynamic
programming): the greedy order would pass over one costly layer for several
cheap ones that together remove less.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dfcompress._data import iter_inputs
from dfcompress._modes import eval_mode
from dfcompress.quant import _layers
from dfcompress.quant._bnfold import fold_batchnorms
from dfcompress.quant.config import IntQuant, Mixed, PerGroup
from dfcompress.quant.fake_quantizer import FakeQuantizer

__all__ = [
    "HIGH",
    "LOW",
    "MIXED_BUDGET",
    "coarser_configs",
    "layer_bytes",
    "layer_sensitivity",
    "mixed_plan",
    "sized_plan",
    "upgrade_costs",
]

#: The 4-bit and 8-bit weight configs of ``"int4-mixed"``.
LOW = Mixed().low
HIGH = Mixed().high

#: The default output noise budget (mean squared change over variance) of ``"int4-mixed"``.
#: On ImageNet MobileNetV2 (300 crops, GPTQ rounding and bias correction) 0.01 kept
#: 0.907 top-1 agreement at 0.194x the float file, 0.005 kept 0.960 at 0.202x.
MIXED_BUDGET = Mixed().budget


def _rounded(weight: torch.Tensor, config: IntQuant, name: str) -> torch.Tensor:
    shape = tuple(weight.shape)
    axis, group = _layers.resolve_granularity(config, shape, name)
    fq = FakeQuantizer(
        config, _layers.qshape(shape, axis, group), axis, group, "track", restricted=True
    )
    with torch.no_grad():
        out: torch.Tensor = fq(weight.detach())
    return out


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first(out[0])
    if isinstance(out, dict) and out:
        return _first(next(iter(out.values())))
    raise TypeError(f"no tensor in the model's output {type(out).__name__}")


def layer_sensitivity(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    names: list[str],
    config: IntQuant = LOW,
    max_samples: int = 16,
) -> dict[str, float]:
    """Each layer's output noise when only its weights are rounded to ``config``.

    The value is ``mean((y_q - y) ** 2) / var(y)`` for the model's (first)
    output ``y`` on at most ``max_samples`` inputs (the variance of all its
    values), BatchNorm folded first.
    ``model`` is not changed.
    """
    net = copy.deepcopy(model)
    fold_batchnorms(net, set(names))
    xs = list(iter_inputs(data, limit=max_samples))
    scores: dict[str, float] = {}
    with eval_mode(net), torch.no_grad():
        ref = [_first(net(x)).float() for x in xs]
        var = sum(float(((r - r.mean()) ** 2).sum()) for r in ref) / sum(r.numel() for r in ref)
        for name in names:
            layer: Any = net.get_submodule(name)
            w0 = layer.weight.detach().clone()
            layer.weight.copy_(_rounded(w0, config, name))
            err = sum(
                float((_first(net(x)).float() - r).pow(2).sum())
                for x, r in zip(xs, ref, strict=True)
            )
            layer.weight.copy_(w0)
            scores[name] = err / sum(r.numel() for r in ref) / max(var, 1e-30)
    return scores


def _packed_bytes(layer: nn.Module, config: IntQuant, name: str) -> int:
    from dfcompress.io import serialized_size
    from dfcompress.quant.modules import QUANT_CLASSES

    kind = _layers.layer_kind(layer)
    if kind is None:
        return 0
    made = QUANT_CLASSES[kind].from_float(copy.deepcopy(layer), config, name, exact_max=True)
    made.freeze_()
    made.pack_()
    return serialized_size(nn.Sequential(made))


def layer_bytes(model: nn.Module, names: list[str], config: IntQuant) -> dict[str, int]:
    """Bytes of each layer packed alone with ``config``: the file format's figures
    (codes, scales, headers), not an estimate from bit widths."""
    return {n: _packed_bytes(model.get_submodule(n), config, n) for n in names}


def upgrade_costs(
    model: nn.Module, names: list[str], low: IntQuant, high: IntQuant
) -> dict[str, int]:
    """Bytes each layer adds to the packed file with ``high`` weights instead of ``low``
    (:func:`layer_bytes` of both; negative where ``high`` packs smaller)."""
    lo = layer_bytes(model, names, low)
    return {n: b - lo[n] for n, b in layer_bytes(model, names, high).items()}


def coarser_configs(low: IntQuant, sizes: tuple[int, ...]) -> list[IntQuant]:
    """``low`` in each group size of ``sizes`` but its own (none unless ``low`` is per group).

    >>> from dfcompress.quant.config import PerGroup
    >>> [c.granularity.size for c in coarser_configs(IntQuant(4, PerGroup(32)), (32, 64, 128))]
    [64, 128]
    """
    g = low.granularity
    if not isinstance(g, PerGroup):
        return []
    return [
        dataclasses.replace(low, granularity=dataclasses.replace(g, size=k))
        for k in dict.fromkeys(sizes)
        if k != g.size
    ]


def sized_plan(
    options: dict[str, list[tuple[float, int]]], room: int, steps: int = 4096
) -> dict[str, int]:
    """For each layer, the index of the ``(noise, bytes)`` option that leaves the least noise.

    Each layer takes exactly one of its options; the noises sum least with the
    bytes summing to at most ``room`` (a multiple-choice knapsack, by dynamic
    programming over ``steps`` cost units). Bytes are counted from any
    reference and may be negative (an option smaller than the reference); each
    layer's are taken from its cheapest option and rounded up to whole units,
    so the plan found never exceeds ``room``. When even the cheapest options
    overrun ``room``, those are returned. Ties go to the earlier option.

    >>> sized_plan({"a": [(0.5, 0), (0.0, 9)], "b": [(0.3, 0), (0.0, 5), (0.1, -2)]}, 8)
    {'a': 1, 'b': 2}
    """
    names = sorted(options)
    base = {n: min(c for _, c in options[n]) for n in names}
    spare = room - sum(base.values())
    if spare < 0:
        return {
            n: min(range(len(o)), key=[c for _, c in o].__getitem__) for n, o in options.items()
        }
    unit = max(1, -(-spare // steps))
    cap = spare // unit
    units = {n: [-(-(c - base[n]) // unit) for _, c in options[n]] for n in names}
    best = torch.zeros(cap + 1, dtype=torch.float64)  # least noise within c units
    choices: list[torch.Tensor] = []
    for name in names:
        new = torch.full_like(best, float("inf"))
        pick = torch.zeros(cap + 1, dtype=torch.long)
        for j, ((noise, _), w) in enumerate(zip(options[name], units[name], strict=True)):
            if w > cap:
                continue
            cand = torch.full_like(best, float("inf"))
            cand[w:] = best[: cap + 1 - w] + noise
            better = cand < new
            new = torch.where(better, cand, new)
            pick = torch.where(better, torch.full_like(pick, j), pick)
        best = new
        choices.append(pick)
    chosen: dict[str, int] = {}
    c = cap
    for name, pick in zip(reversed(names), reversed(choices), strict=True):
        j = int(pick[c])
        chosen[name] = j
        c -= units[name][j]
    return dict(sorted(chosen.items()))


def mixed_plan(
    scores: dict[str, float],
    budget: float = MIXED_BUDGET,
    sizes: dict[str, int] | None = None,
) -> set[str]:
    """The layers kept at 8 bits, until the rest's noise sums to at most ``budget``.

    Layers are taken in order of ``scores[name] / sizes[name]`` (noise per
    weight; by score alone when ``sizes`` is None), so the 8-bit bytes go where
    they remove the most noise. Under a file-size limit this plan overruns,
    :func:`sized_plan` chooses instead.

    >>> sorted(mixed_plan({"a": 0.5, "b": 0.004, "c": 0.003}, budget=0.01))
    ['a']
    >>> sorted(mixed_plan({"big": 0.02, "dw": 0.015}, 0.025, {"big": 1000, "dw": 10}))
    ['dw']
    """
    high: set[str] = set()
    left = sum(scores.values())

    def density(kv: tuple[str, float]) -> float:
        return kv[1] / max(1, sizes[kv[0]]) if sizes is not None else kv[1]

    for name, s in sorted(scores.items(), key=density, reverse=True):
        if left <= budget:
            break
        high.add(name)
        left -= s
    return high
