"""Parameters at their logical count: packed weights count as the weights they hold.

A quantized layer that stores its int8/int4 codes packed in a buffer, or a binary
convolution that stores one bit per weight, has no ``weight`` parameter any more;
counting ``model.parameters()`` would make a quantized model look smaller in
parameters, not just in bytes. Pruned weights are held dense (zeros included), so
they count in full here and as zeros in the non-zero count.

>>> from torch import nn
>>> logical_params(nn.Linear(10, 4))
44
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["logical_params", "packed_weight_numel"]


def packed_weight_numel(module: nn.Module) -> int:
    """Weight elements ``module`` holds packed in buffers instead of a ``weight`` parameter."""
    if "weight" not in module._parameters or module._parameters["weight"] is not None:
        return 0
    shape = getattr(module, "_shape", None)
    if isinstance(getattr(module, "weight_packed", None), torch.Tensor) and shape is not None:
        return int(math.prod(int(s) for s in shape))
    numel = getattr(module, "weight_numel", None)
    if isinstance(getattr(module, "weight_bits", None), torch.Tensor) and isinstance(numel, int):
        return numel
    return 0


def logical_params(model: nn.Module) -> int:
    """Parameter elements of ``model``, packed weights counted at their logical count."""
    own = sum(p.numel() for p in model.parameters())
    return own + sum(packed_weight_numel(m) for m in model.modules())
