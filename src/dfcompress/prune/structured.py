"""Structured channel pruning through torch-pruning's dependency graph.

Channels (and attention head dimensions) are really removed: the result is a
smaller ``nn.Module`` with fewer parameters and MACs. torch-pruning traces the
model once on example inputs and groups every layer coupled to a channel (the
BatchNorm after a conv, the next layer's input, every block of a residual
stage, the halves of a concatenation), so pruning one group keeps the graph
consistent.

- The head (``ignore="head"``, the last ``nn.Linear``) is left whole by default
  so the output keeps its shape; any selector can be ignored instead.
- BNext's ``BinaryConv2d`` and ``BinaryActivation`` are not torch layers: a
  pruner for each is registered with torch-pruning, so BNext's float and
  binary parts shrink together along the coupled channels (a removed channel
  of a binary conv takes its latent weights, and so its signs, with it).
- Attention blocks that expose ``qkv`` (``nn.Linear``) and ``num_heads`` are
  pruned along head dimensions, with ``head_dim`` updated. timm's attention
  reshapes its output to its input width, so in timm ViTs the attention and
  the residual width are kept and the MLP hidden channels are pruned (most of
  a ViT's parameters).
- A graph that cannot be pruned (a reshape with hard-coded sizes, an op
  torch-pruning does not know) raises :class:`~dfcompress.DfcompressError`
  naming the layer that failed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune._calib import calibration_batch, guess_input_shape
from dfcompress.prune._targets import AmountSpec, check_amount
from dfcompress.select import SelectorLike, as_selector

__all__ = ["ImportanceName", "prune_channels"]

ImportanceName = Literal["l1", "l2", "taylor"]


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


def _custom_pruners(model: nn.Module) -> dict[Any, Any]:
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


def _attention_heads(model: nn.Module) -> tuple[dict[nn.Module, int], list[nn.Module]]:
    heads: dict[nn.Module, int] = {}
    frozen: list[nn.Module] = []
    for m in model.modules():
        qkv, n = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(n, int):
            proj = getattr(m, "proj", None)
            if _frozen_width_attention(m) and isinstance(proj, nn.Module):
                frozen += [qkv, proj]
            else:
                heads[qkv] = n
    return heads, frozen


def _fix_attention(model: nn.Module) -> None:
    for m in model.modules():
        qkv, n = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(n, int) and hasattr(m, "head_dim"):
            setattr(m, "head_dim", qkv.out_features // (3 * n))  # noqa: B010 - typed as Module


def _importance(name: str) -> Any:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise DfcompressError(f"importance={name!r} is not known: use 'l1', 'l2' or 'taylor'")


def _self_supervised_loss(out: torch.Tensor) -> torch.Tensor:
    """A label-free loss for Taylor importance: the model's own decisions as targets."""
    out = out.reshape(out.shape[0], -1).float()
    if out.shape[1] == 1:
        target = (out.detach() > 0).float()
        return nn.functional.binary_cross_entropy_with_logits(out, target)
    return nn.functional.cross_entropy(out, out.detach().argmax(1))


def _output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DfcompressError(f"cannot read a tensor from a model output of type {type(out)}")


def _forward_naming_failure(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model(x)``; on failure raise naming the innermost module that was running."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []
    done: list[str] = []

    def enter(mod: nn.Module, _args: Any) -> None:
        stack.append(names.get(mod, "?"))

    def leave(mod: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()
        if not list(mod.children()):
            done.append(names.get(mod, "?"))

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        return _output(model(x))
    except Exception as e:
        where = (stack[-1] if stack else "") or type(model).__name__
        after = f" after layer {done[-1]!r}" if done else ""
        raise DfcompressError(
            f"the pruned graph no longer runs: {where!r} fails{after} ({e}); this graph "
            "cannot be pruned there: ignore the layers feeding it (ignore=...)"
        ) from e
    finally:
        for h in handles:
            h.remove()


def _make_pruner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    imp: Any,
    global_pruning: bool,
    default: float,
    ratios: dict[nn.Module, float],
    ignored: list[nn.Module],
    round_to: int | None,
) -> Any:
    heads, frozen = _attention_heads(model)
    return tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=imp,
        global_pruning=global_pruning,
        pruning_ratio=default,
        pruning_ratio_dict=ratios or None,
        ignored_layers=ignored + frozen,
        round_to=round_to,
        num_heads=heads,
        customized_pruners=_custom_pruners(model),
    )


def prune_channels(
    model: nn.Module,
    amount: AmountSpec = 0.3,
    *,
    importance: ImportanceName = "l1",
    example_inputs: torch.Tensor | None = None,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    ignore: SelectorLike | Sequence[SelectorLike] | None = "head",
    global_pruning: bool = False,
    round_to: int | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Remove a fraction of the channels of conv/linear layers (and what is coupled to them).

    Args:
        model: The model to prune.
        amount: Fraction of channels to remove in every prunable group, or
            ``{selector: fraction}`` (other layers keep their channels).
        importance: ``"l1"`` / ``"l2"`` group weight norms, or ``"taylor"``
            (``abs(weight * gradient)`` on the calibration batch, label-free: the
            model's own decisions are the targets).
        example_inputs: A batch to trace the graph with (default: one guessed
            or taken from ``calibration``).
        calibration: Data for Taylor importance (and the trace, if
            ``example_inputs`` is absent).
        ignore: Layers whose output channels are kept (default: the head).
        global_pruning: Rank groups across layers instead of per layer.
        round_to: Keep channel counts multiples of this.
        inplace: Prune ``model`` itself instead of a copy.

    Returns:
        The pruned, really smaller model; its output shape is unchanged.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    >>> small = prune_channels(net, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    >>> small[0].out_channels, small[5].in_features, net[0].out_channels
    (8, 8, 16)
    """
    if not inplace:
        model = copy.deepcopy(model)
    imp = _importance(importance)
    if example_inputs is None:
        if calibration is not None:
            example_inputs = calibration_batch(model, calibration, n_samples=2)
        else:  # tracing needs shapes, not realistic values
            gen = torch.Generator().manual_seed(0)
            example_inputs = torch.randn((2, *guess_input_shape(model)), generator=gen)
    ignored: list[nn.Module] = []
    if ignore is not None:
        items: list[Any] = list(ignore) if isinstance(ignore, (list, set)) else [ignore]
        for sel in items:
            ignored += list(as_selector(sel).resolve(model).values())
    if isinstance(amount, Mapping):
        default = 0.0
        ratios: dict[nn.Module, float] = {}
        for key, value in amount.items():
            a = check_amount(value, f"amount[{key!r}]")
            hits = as_selector(key).resolve(model)
            if not hits:
                raise DfcompressError(f"amount key {key!r} matched no layer")
            ratios.update({m: a for m in hits.values()})
    else:
        default, ratios = check_amount(amount), {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reference = _forward_naming_failure(model, example_inputs)
    try:
        with warnings.catch_warnings():
            # Parameters outside torch layers (BNext's mix, a ViT's pos_embed) are
            # pruned along their last non-singleton dimension, which is the channel.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = _make_pruner(
                model, example_inputs, imp, global_pruning, default, ratios, ignored, round_to
            )
    except DfcompressError:
        raise
    except Exception as e:
        raise DfcompressError(
            f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__}: {e}"
        ) from e
    if importance == "taylor":
        x = (
            calibration_batch(model, calibration, n_samples=16)
            if calibration is not None
            else example_inputs
        )
        model.zero_grad()
        loss = _self_supervised_loss(_output(model(x)))
        torch.autograd.backward(loss)
    names = {m: n for n, m in model.named_modules()}
    groups = iter(pruner.step(interactive=True))
    last: str | None = None
    while True:
        try:
            # Importance is scored while the generator advances; a coupling
            # torch-pruning mis-tracks shows up here as an IndexError.
            group = next(groups)
        except StopIteration:
            break
        except Exception as e:
            where = "the first channel group" if last is None else f"the group after {last!r}"
            raise DfcompressError(
                f"torch-pruning cannot score {where} of {type(model).__name__}: "
                f"{type(e).__name__}: {e}; exclude the layers involved with ignore=..."
            ) from e
        layer = group[0].dep.target.module
        last = names.get(layer, type(layer).__name__)
        try:
            group.prune()
        except Exception as e:
            raise DfcompressError(
                f"cannot prune the channels of layer {last!r}: {type(e).__name__}: {e}"
            ) from e
    model.zero_grad(set_to_none=True)
    _fix_attention(model)
    with torch.no_grad():
        out = _forward_naming_failure(model, example_inputs)
    if out.shape != reference.shape:
        raise DfcompressError(
            f"pruning changed the output shape from {tuple(reference.shape)} to "
            f"{tuple(out.shape)}: ignore the layer producing the output (ignore=...)"
        )
    model.train(was_training)
    return model
