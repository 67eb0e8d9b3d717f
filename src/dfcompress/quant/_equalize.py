"""Activation equalization: move per-input-channel ranges from activations into weights.

A per-tensor activation scale is set by the widest input channel, so narrow
channels get few codes. For a conv/linear ``y = W x`` and positive factors
``s`` (one per input channel), ``y = (W diag(s)) (x / s)`` exactly; choosing
``s_j = max|x_j| ** alpha / max|W_:j| ** (1 - alpha)`` evens out the channels
the activation quantizer sees, at some cost to the weights (SmoothQuant's
migration strength ``alpha``). When every group of a conv has a single input
channel (a depthwise conv) and weights are quantized per output channel, the
factor of a channel lands on its own output rows, whose scale absorbs it
exactly: there ``alpha = 1`` costs the weights nothing.

>>> w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
>>> x = torch.tensor([[10.0, 0.5]])
>>> s = smoothing_factors(x.abs().amax(0), weight_column_max(w, 1), 0.5)
>>> ws = scale_weight_columns(w, s, 1)
>>> torch.allclose((x / s) @ ws.T, x @ w.T)
True
"""

from __future__ import annotations

import torch

__all__ = [
    "channel_dim",
    "channel_minmax",
    "scale_weight_columns",
    "smoothing_factors",
    "weight_column_max",
]


def channel_dim(kind: str, x: torch.Tensor) -> int:
    """The input-channel dimension of ``x`` for a layer kind (last for linear, 1 for conv)."""
    return x.dim() - 1 if kind == "linear" else 1


def channel_minmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum of ``x`` along every dimension but ``dim``."""
    dims = tuple(d for d in range(x.dim()) if d != dim)
    x = x.detach()
    if not dims:
        return x, x
    # Two strided reductions in place: cheaper than a channels-last copy for aminmax.
    return x.amin(dim=dims), x.amax(dim=dims)


def weight_column_max(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``max |W|`` over the weights that read each input channel; shape ``(in,)``.

    ``w`` is ``(out, in // groups, *kernel)`` (conv) or ``(out, in)`` (linear).
    """
    out, cin_g = w.shape[0], w.shape[1]
    v = w.detach().abs().reshape(groups, out // groups, cin_g, -1).amax(dim=(1, 3))
    return v.reshape(-1)


def smoothing_factors(x_absmax: torch.Tensor, w_colmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|x| ** alpha / max|W| ** (1 - alpha)``, normalised to a maximum of 1.

    Channels that were never non-zero (or read by all-zero weights) get factor 1.
    """
    eps = torch.finfo(torch.float32).tiny ** 0.25
    xa = x_absmax.to(torch.float32)
    wa = w_colmax.to(torch.float32)
    dead = (xa <= eps) | (wa <= eps)
    s = xa.clamp_min(eps) ** alpha / wa.clamp_min(eps) ** (1.0 - alpha)
    s = torch.where(dead, torch.ones_like(s), s)
    peak = s.max()
    s = s / peak if bool(peak > 0) else torch.ones_like(s)
    # Keep factors within float32's comfortable range, whatever the statistics.
    return s.clamp_min(1e-6)


def scale_weight_columns(w: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    """``W diag(s)``: each weight multiplied by the factor of the input channel it reads."""
    out, cin_g = w.shape[0], w.shape[1]
    shaped = w.reshape(groups, out // groups, cin_g, -1)
    return (shaped * s.to(w.dtype).reshape(groups, 1, cin_g, 1)).reshape(w.shape)
