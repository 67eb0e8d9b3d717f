"""What torch-pruning needs to know about layers and graphs it does not handle alone.

- Pruners for BNext's ``BinaryConv2d`` and ``BinaryActivation`` (not torch layers).
- Attention bookkeeping: the ``qkv`` layers (or Hugging Face style separate
  ``query``/``key``/``value`` layers) and their head counts, the head sizes
  stored next to them, and the timm attention blocks whose width is frozen.
- A guard around the importance: a channel group that torch-pruning cannot score
  (its index mapping through a reshape or a concatenation is wrong), that
  flattens channels a permute moved (channels-last tokens into a Linear), or that
  crosses an operation whose sizes are hard-coded in the model's code (a
  ``torch.split`` with fixed sizes) is kept whole instead of failing the model.
- Layer-scale modules that reshape their parameter to a stored shape
  (timm's ``Scale``) get that shape updated after pruning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

__all__ = [
    "GuardedImportance",
    "attention_heads",
    "custom_pruners",
    "fix_after_pruning",
]

# Operations whose output sizes the model's own code may fix (``torch.split(x,
# self.splits)``, ``x.unbind``): torch-pruning updates its graph, not that code.
_TIED_OPS: tuple[type, ...] = (tp.ops._SplitOp, tp.ops._UnbindOp)
_REORDERS = ("PermuteBackward", "TransposeBackward")


def _reorders(node: Any) -> bool:
    fn = getattr(node, "grad_fn", None)
    return fn is not None and type(fn).__name__.startswith(_REORDERS)


def flattens_reordered_channels(group: Any) -> bool:
    """Whether a channel reaches a flatten after an odd number of permutes on its way.

    torch-pruning maps channel ``c`` of a ``(N, C, H, W)`` tensor flattened into
    a Linear to the inputs ``c * H * W ...``: right for channels-first, wrong
    once a permute put the channel last (``x.permute(0, 2, 3, 1).flatten(1)``),
    where the wrong columns would be removed silently. An even count is a
    permute undone before the flatten (attention's head transposes).
    """
    parent: dict[Any, Any] = {}
    for dep, _ in group:
        if dep.target is not dep.source:
            parent.setdefault(dep.target, dep.source)
    for dep, _ in group:
        mappings = getattr(dep, "index_mapping", None) or []
        if not any(type(m).__name__ == "_FlattenIndexMapping" for m in mappings):
            continue
        node, seen, count = dep.source, set(), 0
        while node is not None and node not in seen:
            seen.add(node)
            count += _reorders(node)
            node = parent.get(node)
        if count % 2:
            return True
    return False


class _BinaryConvPruner(tp.pruner.BasePruningFunc):  # type: ignore[misc]
    """Channel pruner for dfcompress's BinaryConv2d (latent float weight, out x in x k x k)."""

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
        keep = _keep(layer.out_channels, idxs)
        layer.weight = nn.Parameter(layer.weight.data[keep].clone())
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
        keep = _keep(layer.in_channels, idxs)
        layer.weight = nn.Parameter(layer.weight.data[:, keep].clone())
        layer.in_channels = len(keep)
        return layer

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.out_channels)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.in_channels)


class _ChannelParamPruner(tp.pruner.BasePruningFunc):  # type: ignore[misc]
    """Pruner for modules whose parameters all hold one entry per channel along dim 1."""

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
        for name, p in list(layer.named_parameters(recurse=False)):
            keep = _keep(p.shape[1], idxs)
            setattr(layer, name, nn.Parameter(p.data[:, keep].clone()))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: Any) -> int:
        return int(next(layer.parameters(recurse=False)).shape[1])

    def get_in_channels(self, layer: Any) -> int:
        return self.get_out_channels(layer)


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = {int(i) for i in idxs}
    return [i for i in range(n) if i not in drop]


def custom_pruners(model: nn.Module) -> dict[Any, Any]:
    """torch-pruning pruners for the non-torch layers of ``model`` (BNext's binary layers)."""
    out: dict[Any, Any] = {}
    for m in model.modules():
        name = type(m).__name__
        if name == "BinaryConv2d" and getattr(m, "weight", None) is not None:
            out[type(m)] = _BinaryConvPruner()
        elif name == "BinaryActivation":
            out[type(m)] = _ChannelParamPruner()
    return out


def _frozen_width_attention(module: nn.Module) -> bool:
    """timm's attention reshapes its output to its *input* width, so neither its
    head dimensions nor the residual width it sits on can change."""
    return type(module).__module__.startswith("timm.") and isinstance(
        getattr(module, "proj", None), nn.Linear
    )


def _separate_qkv(module: nn.Module) -> list[nn.Linear] | None:
    """The ``query``/``key``/``value`` layers of a Hugging Face style attention, if any."""
    layers = [getattr(module, n, None) for n in ("query", "key", "value")]
    if all(isinstance(q, nn.Linear) for q in layers) and isinstance(
        getattr(module, "num_attention_heads", None), int
    ):
        return [q for q in layers if isinstance(q, nn.Linear)]
    return None


def attention_heads(model: nn.Module) -> tuple[dict[nn.Module, int], list[nn.Module]]:
    """``{qkv layer: num_heads}`` for prunable attention, and the layers to keep whole.

    Attention with one ``qkv`` layer and ``num_heads`` (timm's, and alike), and
    Hugging Face style attention with separate ``query``/``key``/``value``
    layers and ``num_attention_heads``, are pruned along head dimensions.
    """
    heads: dict[nn.Module, int] = {}
    frozen: list[nn.Module] = []
    for m in model.modules():
        separate = _separate_qkv(m)
        if separate is not None:
            heads.update({q: int(getattr(m, "num_attention_heads")) for q in separate})  # noqa: B009
            continue
        qkv, n = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(n, int):
            proj = getattr(m, "proj", None)
            if _frozen_width_attention(m) and isinstance(proj, nn.Module):
                frozen += [qkv, proj]
            else:
                heads[qkv] = n
    return heads, frozen


class GuardedImportance:
    """Wrap a torch-pruning importance so that a group it cannot rank is kept whole.

    Returning ``None`` tells torch-pruning to skip a group. A group is skipped
    when scoring it fails, when its scores are not one finite entry per
    channel, when it crosses a split with a list of sizes (``torch.split(x,
    [a, b])``: the list lives in the model's code and would not follow), when
    it flattens channels after a permute moved them (torch-pruning would remove
    the wrong inputs of the next Linear), when it crosses any split or unbind
    (in cautious mode), or when it touches a module of ``avoid`` (layers an
    earlier pass broke).

    Args:
        inner: The importance to wrap (a group in, a 1-D score out).
        cautious: Also skip groups that cross any split or unbind.
        avoid: Modules whose groups are kept whole.
    """

    def __init__(self, inner: Any, *, cautious: bool = False, avoid: set[nn.Module]) -> None:
        self.inner = inner
        self.cautious = cautious
        self.avoid = avoid
        self.skipped = 0
        self.reordered: list[nn.Module] = []  # layers whose channels a permute moved

    def _blocked(self, group: Any) -> bool:
        if flattens_reordered_channels(group):
            self.reordered.append(group[0].dep.target.module)
            return True
        for dep, _ in group:
            for node in (dep.source, dep.target):
                m = node.module
                if m in self.avoid:
                    return True
                if isinstance(m, _TIED_OPS) and (
                    self.cautious or hasattr(getattr(node, "grad_fn", None), "_saved_split_sizes")
                ):
                    return True
        return False

    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        if self._blocked(group):
            self.skipped += 1
            return None
        try:
            imp = self.inner(group, **kwargs)
        except (IndexError, RuntimeError, ValueError):
            # torch-pruning's index mapping through this group is wrong: keep it whole
            self.skipped += 1
            return None
        if not isinstance(imp, torch.Tensor) or imp.dim() != 1 or not bool(imp.isfinite().all()):
            self.skipped += 1
            return None
        return imp


def fix_after_pruning(model: nn.Module) -> None:
    """Update the sizes that modules store next to pruned parameters."""
    for m in model.modules():
        separate = _separate_qkv(m)
        if separate is not None:
            width = separate[0].out_features
            n_heads = int(getattr(m, "num_attention_heads"))  # noqa: B009
            # the forward reshapes to (heads, attention_head_size) and back to all_head_size
            for name, value in (
                ("attention_head_size", width // n_heads),
                ("all_head_size", width),
            ):
                if isinstance(getattr(m, name, None), int):
                    setattr(m, name, value)
        qkv, n = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(n, int) and hasattr(m, "head_dim"):
            setattr(m, "head_dim", qkv.out_features // (3 * n))  # noqa: B010 - typed as Module
        shape = getattr(m, "shape", None)
        params = list(m.parameters(recurse=False))
        if (
            isinstance(shape, tuple)
            and shape
            and all(isinstance(d, int) for d in shape)
            and len(params) == 1
            and params[0].dim() == 1
            and shape[0] != params[0].numel()
        ):
            # a layer scale reshaping its vector to (C, 1, 1) before multiplying
            setattr(m, "shape", (params[0].numel(), *shape[1:]))  # noqa: B010
