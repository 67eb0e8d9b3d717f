"""The int32 bias grid both runtimes add a quantized layer's bias on.

ONNX Runtime's QLinearConv/QGemm and XNNPACK's int8 convolutions and linear
layers take the bias as int32 codes of step ``s_x * s_w`` (input scale times the
output channel's weight scale). Each target's eager model moves its float bias
to the nearest code with :func:`on_int32_grid`, so it adds what the file adds.
"""

from __future__ import annotations

import torch

__all__ = ["on_int32_grid"]


def on_int32_grid(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``bias`` moved to the nearest int32 code of ``step`` (broadcast to its shape).

    The codes are found in float64, as the exporters find them; a step that is
    not positive is taken as 1e-12. The result has ``bias``'s dtype.

    >>> on_int32_grid(torch.tensor([0.26, -0.74]), torch.tensor(0.5)).tolist()
    [0.5, -0.5]
    """
    s = step.detach().double().expand(bias.shape)
    s = torch.where(s > 0, s, torch.full_like(s, 1e-12))
    codes = torch.round(bias.detach().double() / s).clamp(-(2**31), 2**31 - 1)
    return (codes * s).to(bias.dtype)
