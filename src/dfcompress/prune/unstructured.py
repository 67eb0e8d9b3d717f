"""L1 magnitude unstructured pruning, local (per layer) or global (one threshold).

Pruning zeroes the ``round(amount * n)`` weights of smallest magnitude, exactly:
ties are broken by position (a stable sort over the flattened weights, layers
in registration order), so the number of pruned weights never depends on how
many weights share the threshold value.

Global pruning caps what one layer loses (90 % of its weights by default, 50 %
for a depthwise convolution; never below the amount asked): the weights a
capped layer keeps are taken from the other layers, so the total is unchanged.
Without caps one threshold over a BatchNorm network, whose BatchNorm layers
rescale each conv's weights, can empty whole layers.

While a model is being pruned iteratively each pruned layer keeps its mask as
a non-persistent buffer ``dfc_weight_mask`` and a forward pre-hook that
re-applies it, so fine-tuning between steps cannot revive pruned weights.
:func:`make_permanent` removes both, leaving plain ``nn.Parameter`` weights
with zeros in them (no ``torch.nn.utils.prune`` re-parametrization).

Biases, BatchNorm and binary layers (BNext's ``BinaryConv2d``, whose latent
weights are binarized: zeroing one does not remove it) are never pruned.
Conv/linear subclasses with their own ``forward`` are pruned when a probe shows
that forward computes with the layer's own weight; the others are left as they
are, named in one :class:`~dfcompress.FloatLayersWarning` and by
:func:`dfcompress.summary`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from dfcompress._summary import FloatReason, mark_float, warn_float
from dfcompress.errors import DfcompressError
from dfcompress.prune._caps import (
    DEFAULT_DEPTHWISE_CAP,
    DEFAULT_LAYER_CAP,
    cap_counts,
    capped_counts,
    check_cap,
)
from dfcompress.prune._targets import AmountSpec, Select, resolve_amounts
from dfcompress.quant._layers import has_own_forward, reads_own_weight

__all__ = [
    "Scope",
    "apply_masks",
    "get_masks",
    "l1_unstructured",
    "make_permanent",
    "sparsity",
]

Scope = Literal["global", "local"]
_MASK = "dfc_weight_mask"


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise DfcompressError(f"{type(module).__name__} has no weight tensor to prune")
    return w


class _MaskHook:
    """Forward pre-hook: multiply the weight by its mask before every forward."""

    def __call__(self, module: nn.Module, _args: object) -> None:
        mask = getattr(module, _MASK, None)
        if isinstance(mask, torch.Tensor):
            w = _weight(module)
            with torch.no_grad():
                w.masked_fill_(~mask, 0.0)  # +0.0: a -0.0 would not store sparsely


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    if not isinstance(getattr(module, _MASK, None), torch.Tensor):
        module.register_buffer(_MASK, mask, persistent=False)
        module.register_forward_pre_hook(_MaskHook())
    else:
        setattr(module, _MASK, mask)
    w = _weight(module)
    with torch.no_grad():
        w.masked_fill_(~mask, 0.0)  # +0.0: a -0.0 would not store sparsely


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks (True = kept) of the layers currently being pruned, by module name.

    >>> from torch import nn
    >>> net = l1_unstructured(nn.Sequential(nn.Linear(4, 4)), 0.5, keep_masks=True)
    >>> int(get_masks(net)["0"].sum())
    8
    """
    out: dict[str, torch.Tensor] = {}
    for n, m in model.named_modules():
        mask = getattr(m, _MASK, None)
        if isinstance(mask, torch.Tensor):
            out[n] = mask
    return out


def apply_masks(model: nn.Module) -> nn.Module:
    """Zero the masked weights now (e.g. after an optimizer step), in place."""
    for m in model.modules():
        mask = getattr(m, _MASK, None)
        if isinstance(mask, torch.Tensor):
            w = _weight(m)
            with torch.no_grad():
                w.masked_fill_(~mask, 0.0)  # +0.0: a -0.0 would not store sparsely
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights and drop mask buffers and hooks, in place.

    Afterwards every weight is a plain ``nn.Parameter`` with zeros where it was
    pruned; the model carries no pruning machinery.

    >>> from torch import nn
    >>> net = l1_unstructured(nn.Sequential(nn.Linear(4, 4)), 0.5, keep_masks=True)
    >>> net = make_permanent(net)
    >>> get_masks(net), int((net[0].weight == 0).sum())
    ({}, 8)
    """
    apply_masks(model)
    for m in model.modules():
        if isinstance(getattr(m, _MASK, None), torch.Tensor):
            del m._buffers[_MASK]
            for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, _MaskHook)]:
                del m._forward_pre_hooks[key]
    return model


def _prune_pool(
    layers: Iterable[nn.Module],
    amount: float,
    layer_cap: float | None = None,
    depthwise_cap: float | None = None,
) -> None:
    """Zero the round(amount * n) smallest |w| over all ``layers`` together, within the caps."""
    mods = list(layers)
    mags = [_weight(m).detach().abs().flatten().float() for m in mods]
    k = round(amount * sum(t.numel() for t in mags))
    counts = capped_counts(mags, k, cap_counts(mods, amount, layer_cap, depthwise_cap))
    for m, mag, c in zip(mods, mags, counts, strict=True):
        w = _weight(m)
        keep = torch.ones(mag.numel(), dtype=torch.bool, device=mag.device)
        if c > 0:
            keep[torch.sort(mag, stable=True).indices[:c]] = False
        mask = keep.view_as(w)
        old = getattr(m, _MASK, None)
        if isinstance(old, torch.Tensor) and bool((~old & mask).any()):
            # A weight pruned earlier has grown back above the threshold during
            # fine-tuning; masks only shrink, so it stays pruned.
            mask = mask & old
        _set_mask(m, mask)


def l1_unstructured(
    model: nn.Module,
    amount: AmountSpec,
    *,
    scope: Scope = "global",
    select: Select | None = None,
    keep_masks: bool = False,
    inplace: bool = False,
    layer_cap: float | None = DEFAULT_LAYER_CAP,
    depthwise_cap: float | None = DEFAULT_DEPTHWISE_CAP,
) -> nn.Module:
    """Zero the smallest-magnitude weights of conv and linear layers.

    Args:
        model: The model to prune.
        amount: Fraction of weights to zero, in [0, 1), over every selected layer,
            or a mapping ``{selector: fraction}`` such as ``{"conv": 0.2,
            "linear": 0.2}`` (keys are presets, globs, types or exact module names).
        scope: ``"global"`` ranks all weights of a group (one mapping entry)
            together, so layers with small weights lose more; ``"local"`` prunes
            each layer by the same fraction.
        select: Narrow the candidate layers (default: every conv/linear that is
            not binary).
        keep_masks: Keep masks and hooks for iterative pruning (see
            :func:`make_permanent`); otherwise the result holds plain weights.
        inplace: Prune ``model`` itself instead of a copy.
        layer_cap: With ``scope="global"``, the largest fraction of its weights
            one layer loses (None: no cap); the weights a capped layer keeps are
            pruned from the others, so the total is still ``amount``. A cap
            below ``amount`` counts as ``amount``.
        depthwise_cap: The same for depthwise convolutions, whose few weights per
            channel each carry a whole path: uncapped, one threshold over a
            BatchNorm-rescaled network can empty them all (ImageNet MobileNetV2
            at 50 %: 2 % top-1 agreement with the unpruned model).

    Returns:
        The pruned model.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    >>> _ = net(torch.zeros(1, 3, 6, 6))
    >>> small = l1_unstructured(net, {"conv": 0.5, "linear": 0.2}, scope="local")
    >>> int((small[0].weight == 0).sum()), small[0].weight.numel()
    (108, 216)
    >>> bool((net[0].weight == 0).any())  # the caller's model is untouched
    False
    """
    if scope not in ("global", "local"):
        raise DfcompressError(f"scope={scope!r} is not known: use 'global' or 'local'")
    layer_cap = check_cap(layer_cap, "layer_cap")
    depthwise_cap = check_cap(depthwise_cap, "depthwise_cap")
    if not inplace:
        import copy

        model = copy.deepcopy(model)
    left: dict[str, FloatReason] = {}
    for a, layers in resolve_amounts(model, amount, select):
        for name, m in list(layers.items()):
            if has_own_forward(m) and not reads_own_weight(m):
                left[name] = "unsupported subclass"  # zeroing its weight would change nothing
                del layers[name]
        if not layers:
            continue
        if scope == "global":
            _prune_pool(layers.values(), a, layer_cap, depthwise_cap)
        else:
            for m in layers.values():
                _prune_pool([m], a)
    if not keep_masks:
        make_permanent(model)
    for name, why in left.items():
        mark_float(model.get_submodule(name), why)
    warn_float(left, verb="prune", stacklevel=2)
    return model


def sparsity(model: nn.Module, select: Select | None = None) -> float:
    """Fraction of zero weights over the prunable conv/linear layers.

    >>> from torch import nn
    >>> sparsity(l1_unstructured(nn.Linear(10, 10), 0.3))
    0.3
    """
    from dfcompress.prune._targets import prunable_layers

    layers = prunable_layers(model, select)
    weights = [_weight(m) for m in layers.values()]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 0.0
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total
