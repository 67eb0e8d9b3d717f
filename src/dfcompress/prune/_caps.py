"""Per-layer caps on global magnitude pruning: how many weights each layer may lose.

One global threshold over layers whose weights differ in scale (a depthwise
convolution followed by a BatchNorm that rescales it, say) can empty a whole
layer, and an empty depthwise layer cuts every path through the network. A cap
bounds the fraction a layer loses; the weights it keeps are pruned from the
other layers instead (the smallest remaining magnitudes), so the total stays
exactly what was asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dfcompress.errors import DfcompressError

__all__ = [
    "DEFAULT_DEPTHWISE_CAP",
    "DEFAULT_LAYER_CAP",
    "cap_counts",
    "capped_counts",
    "check_cap",
    "is_depthwise",
]

#: The largest fraction of its weights global pruning removes from one layer.
DEFAULT_LAYER_CAP = 0.9
#: The same for a depthwise convolution (few weights per channel, each one a path).
DEFAULT_DEPTHWISE_CAP = 0.5


def check_cap(cap: float | None, what: str) -> float | None:
    """Validate a cap: None (no cap) or a fraction in (0, 1]."""
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0.0 < cap <= 1.0:
        raise DfcompressError(f"{what}={cap!r} is out of range: use a fraction in (0, 1] or None")
    return float(cap)


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution (one input channel per group).

    >>> is_depthwise(nn.Conv2d(8, 8, 3, groups=8)), is_depthwise(nn.Conv2d(8, 8, 3))
    (True, False)
    """
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.groups > 1
        and module.groups == module.in_channels
    )


def cap_counts(
    layers: Sequence[nn.Module],
    amount: float,
    layer_cap: float | None,
    depthwise_cap: float | None,
) -> list[int]:
    """The most weights each layer may lose when ``amount`` of them all is pruned.

    A layer's cap never falls below ``amount`` itself (rounded up), so the total
    asked for can always be met.
    """
    out = []
    for m in layers:
        w = m.weight
        n = w.numel() if isinstance(w, torch.Tensor) else 0
        cap = depthwise_cap if is_depthwise(m) else layer_cap
        if cap is None:
            out.append(n)
        else:
            out.append(min(n, max(math.floor(cap * n), math.ceil(amount * n))))
    return out


def capped_counts(mags: Sequence[torch.Tensor], k: int, caps: Sequence[int]) -> list[int]:
    """How many weights each layer loses: the ``k`` smallest of ``mags`` with no layer over its cap.

    Ties are broken by position (a stable sort over the layers concatenated in
    order), so without a binding cap this is exactly one global threshold. A
    layer that would exceed its cap is fixed at the cap and the rest of the
    budget goes to the others, until none exceeds.

    >>> m = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([5.0, 6.0])]
    >>> capped_counts(m, 3, [3, 2]), capped_counts(m, 3, [1, 2])
    ([3, 0], [1, 2])
    """
    counts = [0] * len(mags)
    fixed: set[int] = set()
    while True:
        active = [i for i in range(len(mags)) if i not in fixed]
        budget = k - sum(counts[i] for i in fixed)
        if not active or budget <= 0:
            return counts
        flat = torch.cat([mags[i].flatten() for i in active])
        chosen = torch.sort(flat, stable=True).indices[:budget]
        sizes = torch.tensor([mags[i].numel() for i in active], device=chosen.device)
        owner = torch.bucketize(chosen, torch.cumsum(sizes, 0), right=True)
        per = torch.bincount(owner, minlength=len(active)).tolist()
        over = [i for i, c in zip(active, per, strict=True) if c > caps[i]]
        if not over:
            for i, c in zip(active, per, strict=True):
                counts[i] = c
            return counts
        for i in over:
            counts[i] = caps[i]
            fixed.add(i)
