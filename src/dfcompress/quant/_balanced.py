"""Balanced rounding: nearest rounding that keeps each filter's sum, without data.

Rounded to nearest, the weights of a filter round independently, so their sum,
the filter's response to a constant input, moves by up to half a step per
weight. On a pretrained depthwise network this is most of what int8 weights
lose: a depthwise filter has nine weights, its sum is often small next to them
(edge and texture filters), and flat image regions feed it a large constant
input. Balanced rounding rounds each unit of weights that shares one scale (an
output row for per-tensor or per-channel weights, a group of a per-group
weight) to nearest, then moves ``|d|`` of its weights to their other nearest
code, where ``d`` is the difference between the rounded sum of the unit's scaled
weights and the sum of its codes: the ``d`` weights whose rounding residual lies
closest to the other code (largest residual when the sum must rise, smallest
when it must fall). Each weight stays within one step of its value and the
unit's sum of codes is the nearest integer to its true sum (unless a code hits
the end of its range).

Measured on ImageNet MobileNetV2 (BatchNorm folded, int8 weights per channel,
activations float, 300 photo crops): top-1 agreement with the float model 0.857
rounded to nearest (KL 0.057), 0.937 balanced (KL 0.0069); bias correction,
which needs data, reaches 0.947 (KL 0.004) from nearest rounding.
"""

from __future__ import annotations

import torch

from dfcompress.quant._adaround import _supported, float_weight
from dfcompress.quant.modules import QuantLayer

__all__ = ["balanced_codes", "balanced_rounding"]


def balanced_codes(units: torch.Tensor) -> torch.Tensor:
    """Integer offsets for ``units`` (rows of weights in steps): nearest, sums kept.

    Args:
        units: ``(n, k)`` weights divided by their step; each row is one unit.

    Returns:
        ``(n, k)`` integers (as floats), each within one of its value, whose row
        sums are the rounded row sums of ``units``.

    >>> balanced_codes(torch.tensor([[0.4, 0.3, 0.45], [-0.6, -0.7, 0.2]]))
    tensor([[ 0.,  0.,  1.],
            [ 0., -1.,  0.]])
    """
    q = torch.round(units)
    need = torch.round(units.sum(1)) - q.sum(1)  # codes to add (+) or take away (-)
    residual = units - q
    ranks = torch.empty_like(q, dtype=torch.long)
    idx = torch.arange(q.shape[1], device=q.device).expand_as(q)
    # rank 0: the weight whose rounding is closest to going the way the sum needs
    ranks.scatter_(1, torch.argsort(-residual * need.sign()[:, None], dim=1, stable=True), idx)
    move = ranks < need.abs()[:, None]
    return q + move.to(q.dtype) * need.sign()[:, None]


def _units(layer: QuantLayer, w: torch.Tensor) -> tuple[int, ...] | None:
    """The shape that puts each unit of one scale on a row, or None (not supported)."""
    wq = layer.weight_quant
    if wq.group_size is not None:
        g = wq.group_size
        return (w.shape[0] * (w.shape[1] // g), -1)
    if wq.axis not in (None, 0):
        return None
    return (w.shape[0], -1)


def balanced_rounding(layers: dict[str, QuantLayer]) -> dict[str, torch.Tensor]:
    """Put the weights of ``layers`` on their grid with balanced rounding (in place).

    Only integer weights of Conv2d/Linear layers are rounded (per tensor, per
    output channel, or per group of input channels); the weight
    quantizer then keeps the scale the codes were chosen for.

    Returns:
        The float weights before rounding, by layer name (what bias correction
        measures the rounding against).
    """
    originals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            wq = layer.weight_quant
            if wq.mode == "dynamic" or not _supported(layer):
                continue  # dynamic weight ranges change at every forward
            weight, w, s, z = float_weight(layer, "balanced rounding")
            shape = _units(layer, w)
            if shape is None:
                continue
            steps = (w / s).reshape(shape)
            codes = balanced_codes(steps).reshape(w.shape)
            codes = torch.clamp(codes, wq.qmin - z, wq.qmax - z)
            originals[name] = weight.detach().clone()
            weight.copy_((codes * s).to(weight.dtype))
            wq.mode = "fixed"  # the scale the codes were chosen for
            layer._cache = None
    return originals
