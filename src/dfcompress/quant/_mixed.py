"""Mixed precision from a sensitivity measure: 4-bit weights where the model can take them.

``quantize(model, "int4-mixed", calibration=...)`` measures, for each conv and
linear layer on its own, how much the model's output changes when only that
layer's weights (BatchNorm folded) are rounded to the 4-bit config: the mean
squared change of the output over the output's variance, on a few calibration
inputs. Rounding noise of different layers adds up roughly independently, so
the layers are taken from the most sensitive down and kept at 8 bits until the
sum over the layers left at 4 bits is within ``budget``. No name list is
involved: in a depthwise network the depthwise convolutions, the stem and the
classifier come out on top by themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dfcompress._data import iter_inputs
from dfcompress._modes import eval_mode
from dfcompress.quant import _layers
from dfcompress.quant._bnfold import fold_batchnorms
from dfcompress.quant.config import IntQuant, PerChannel, PerGroup
from dfcompress.quant.fake_quantizer import FakeQuantizer

__all__ = ["HIGH", "LOW", "MIXED_BUDGET", "layer_sensitivity", "mixed_plan"]

#: The 4-bit and 8-bit weight configs of ``"int4-mixed"``.
LOW = IntQuant(4, PerGroup(32, fallback=PerChannel(0)))
HIGH = IntQuant(8, PerChannel(0))

#: The default output noise budget (mean squared change over variance) of ``"int4-mixed"``.
MIXED_BUDGET = 0.01


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


def mixed_plan(scores: dict[str, float], budget: float = MIXED_BUDGET) -> set[str]:
    """The layers kept at 8 bits: most sensitive first, until the rest sum to ``budget``.

    >>> sorted(mixed_plan({"a": 0.5, "b": 0.004, "c": 0.003}, budget=0.01))
    ['a']
    """
    high: set[str] = set()
    left = sum(scores.values())
    for name, s in sorted(scores.items(), key=lambda kv: -kv[1]):
        if left <= budget:
            break
        high.add(name)
        left -= s
    return high
