"""Fold BatchNorm layers into the convolution that feeds them.

Quantizing the folded weight is what an int8 runtime executes, so the
observers must see it. Pairs are found by tracing the model with ``torch.fx``
(a conv whose only user is a BatchNorm); when a model cannot be traced, by
adjacency inside ``nn.Sequential`` containers.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn

from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError

_log = logging.getLogger("dfcompress")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register_module("quant.folded_bn")
class FoldedBatchNorm(nn.Identity):
    """Stands where a BatchNorm was folded into the preceding convolution."""

    def dfc_spec(self) -> dict[str, Any]:
        """No arguments."""
        return {}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> FoldedBatchNorm:
        """A new identity."""
        return cls()


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and isinstance(bn, _BNS)
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BatchNorm only ever sees that conv's output."""
    modules = dict(model.named_modules())
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception:  # any tracing failure means: use the fallback
        return _sequential_pairs(model)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        c, b = str(node.target), str(user.target)
        if (
            user.op == "call_module"
            and user.args[:1] == (node,)
            and calls.get(c) == 1
            and calls.get(b) == 1
            and _foldable(modules.get(c, nn.Identity()), modules.get(b, nn.Identity()))
        ):
            pairs.append((c, b))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        for (cn, c), (bn_name, b) in itertools.pairwise(kids):
            if _foldable(c, b):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + cn, prefix + bn_name))
    return pairs


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """Rescale ``conv``'s weight and bias in place so that ``conv`` alone equals ``bn(conv(x))``."""
    if not (isinstance(conv, _CONVS) and isinstance(bn, _BNS) and _foldable(conv, bn)):
        raise DfcompressError(f"cannot fold {type(bn).__name__} into {type(conv).__name__}")
    var, mean = bn.running_var, bn.running_mean
    if not (isinstance(var, torch.Tensor) and isinstance(mean, torch.Tensor)):  # pragma: no cover
        raise DfcompressError("BatchNorm without running statistics cannot be folded")
    inv_std = torch.rsqrt(var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
    factor = gamma * inv_std
    conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    old_bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    new_bias = beta + (old_bias - mean) * factor
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorms(model: nn.Module, convs: set[str]) -> list[str]:
    """Fold every foldable BatchNorm that follows one of ``convs``; returns the folded BN names."""
    folded = []
    for c, b in find_conv_bn_pairs(model):
        if c not in convs:
            continue
        fold_bn_into_conv(model.get_submodule(c), model.get_submodule(b))
        _set_submodule(model, b, FoldedBatchNorm())
        folded.append(b)
    if folded:
        _log.info("dfcompress: folded %d BatchNorm layers into their convolutions", len(folded))
    return folded
