"""The check that structured pruning kept every output's shape, and advice when it did not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["output_shape_change"]


def _channels(m: nn.Module) -> int | None:
    n = getattr(m, "out_channels", getattr(m, "out_features", None))
    return n if isinstance(n, int) else None


def _producers(
    original: nn.Module, pruned: nn.Module, before: torch.Size, after: torch.Size
) -> list[str]:
    """Layers whose channel count went from ``before[d]`` to ``after[d]`` along a changed d."""
    changed: set[tuple[int, int]] = set()
    if len(before) == len(after):
        changed = {(a, b) for a, b in zip(before, after, strict=True) if a != b}
    old = dict(original.named_modules())
    out = []
    for name, m in pruned.named_modules():
        n = _channels(m)
        o = _channels(old[name]) if name in old else None
        if n is not None and o is not None and (o, n) in changed:
            out.append(name)
    return out


def _keep_advice(ignore: Any, names: Sequence[str]) -> str:
    """``ignore=`` that keeps ``names`` whole as well as what ``ignore`` kept."""
    kept = [] if ignore is None else list(ignore) if isinstance(ignore, (list, set)) else [ignore]
    layers = ", ".join(repr(n) for n in names) or "'<the layer producing it>'"
    return "ignore=" + " | ".join([f"by_name({layers})", *(repr(k) for k in kept)])


def output_shape_change(
    reference: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    original: nn.Module,
    pruned: nn.Module,
    ignore: Any,
) -> str | None:
    """``None`` when every output kept its shape, else what changed and the ``ignore=`` to pass.

    The advice names the layers whose channel count changed as the output did
    (a head cut from 2 outputs to 1), as a ``by_name(...)`` selector joined to
    what ``ignore`` already kept.

    >>> import torch
    >>> from torch import nn
    >>> before, after = nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(4, 1))
    >>> msg = output_shape_change([torch.zeros(3, 2)], [torch.zeros(3, 1)], before, after, "head")
    >>> what, _, advice = msg.partition(": ")
    >>> what
    'pruning changed the shape of the output from (3, 2) to (3, 1)'
    >>> advice
    "keep the layers producing it whole with ignore=by_name('0') | 'head' (dfcompress.by_name)"
    """
    if len(outputs) != len(reference):
        return (
            f"pruning changed the number of output tensors from {len(reference)} to {len(outputs)}"
        )
    for i, (r, o) in enumerate(zip(reference, outputs, strict=True)):
        if r.shape == o.shape:
            continue
        which = "the output" if len(reference) == 1 else f"output {i} of {len(reference)}"
        names = _producers(original, pruned, r.shape, o.shape)
        return (
            f"pruning changed the shape of {which} from {tuple(r.shape)} to {tuple(o.shape)}: "
            f"keep the layers producing it whole with {_keep_advice(ignore, names)} "
            "(dfcompress.by_name)"
        )
    return None
