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
- Attention blocks that expose ``qkv`` (``nn.Linear``) and ``num_heads``, or
  separate ``query``/``key``/``value`` layers and ``num_attention_heads``
  (Hugging Face's ViT, VideoMAE, BERT), are pruned along head dimensions, with
  ``head_dim`` (``attention_head_size``, ``all_head_size``) updated. timm's attention
  reshapes its output to its input width, so in timm ViTs the attention and
  the residual width are kept and the MLP hidden channels are pruned (most of
  a ViT's parameters).
- A channel group torch-pruning cannot score (its index mapping through a
  reshape or a concatenation is wrong) is kept whole; the others are pruned.
- Channels that go through ``torch.split(x, [a, b, ...])`` are kept whole: the
  list of sizes is in the model's code (MixNet's mixed kernels, MobileViT v2's
  query/key/value split) and would not follow. Layer scales that reshape their
  vector to a stored shape (timm's ``Scale``) get the shape updated.
- Channels a permute moves before a flatten (channels-last tokens into a
  Linear) are kept whole: torch-pruning would remove the wrong Linear inputs.
- When the pruned graph still no longer runs, the model is pruned again from
  its original weights with the groups that cross any split, and those of the
  layer that failed (or, when a container fails, of the layer that ran last
  before it), kept whole (up to three passes).
- A graph that still cannot be pruned (one torch-pruning cannot trace, or one
  that fails after every pass) raises :class:`~dfcompress.DfcompressError`
  naming the layer that failed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune._calib import calibration_batch, guess_input_shape
from dfcompress.prune._output_shapes import output_shape_change
from dfcompress.prune._targets import AmountSpec, check_amount
from dfcompress.prune._tp_support import (
    GuardedImportance,
    attention_heads,
    custom_pruners,
    fix_after_pruning,
)
from dfcompress.prune.sensitivity import output_tensors
from dfcompress.select import SelectorLike, as_selector

__all__ = ["ImportanceName", "prune_channels"]

ImportanceName = Literal["l1", "l2", "taylor"]

_PASSES = 3  # pruning passes before giving up on a graph


def _importance(name: str) -> Any:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise DfcompressError(f"importance={name!r} is not known: use 'l1', 'l2' or 'taylor'")


def _self_supervised_loss(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A label-free loss for Taylor importance: the model's own decisions as targets.

    Summed over the floating-point outputs, so every head's channels count.
    """
    total = torch.zeros(())
    for out in outputs:
        if not out.is_floating_point() or out.dim() == 0:
            continue
        out = out.reshape(out.shape[0], -1).float()
        if out.shape[1] == 1:
            target = (out.detach() > 0).float()
            total = total + nn.functional.binary_cross_entropy_with_logits(out, target)
        else:
            total = total + nn.functional.cross_entropy(out, out.detach().argmax(1))
    return total


class _BrokenGraph(DfcompressError):
    """The pruned graph no longer runs (or changed its output); ``module`` names where."""

    def __init__(self, message: str, *modules: str | None) -> None:
        super().__init__(message)
        self.modules = {m for m in modules if m}


def _forward_naming_failure(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
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
        out = model(x)
    except Exception as e:
        where = (stack[-1] if stack else "") or type(model).__name__
        after = f" after layer {done[-1]!r}" if done else ""
        feeding = repr(done[-1]) if done else "'layer.name'"
        raise _BrokenGraph(
            f"the pruned graph no longer runs: {where!r} fails{after} ({e}); this graph "
            "cannot be pruned there: keep the layers feeding it whole "
            f"(ignore=dfcompress.by_name({feeding}, ...) naming them)",
            stack[-1] if stack else None,
            # a container that fails (an embedding adding a fixed table) names no
            # layer: the leaf that ran last wrote the channels it could not take
            done[-1] if done else None,
        ) from e
    finally:
        for h in handles:
            h.remove()
    return output_tensors(out)


@dataclass(frozen=True)
class _Plan:
    """What to prune, by module name, so that it applies to any copy of the model."""

    importance: ImportanceName
    default: float
    ratios: dict[str, float]
    ignored: set[str]
    global_pruning: bool
    round_to: int | None


def _make_pruner(
    model: nn.Module, example_inputs: torch.Tensor, imp: GuardedImportance, plan: _Plan
) -> Any:
    by_name = dict(model.named_modules())
    heads, frozen = attention_heads(model)
    ratios = {by_name[n]: a for n, a in plan.ratios.items()}
    try:
        with warnings.catch_warnings():
            # Parameters outside torch layers (BNext's mix, a ViT's pos_embed, a
            # layer scale) are pruned along their last non-singleton dimension,
            # which is the channel.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.pruner.BasePruner(
                model,
                example_inputs,
                importance=imp,
                global_pruning=plan.global_pruning,
                pruning_ratio=plan.default,
                pruning_ratio_dict=ratios or None,
                ignored_layers=[by_name[n] for n in sorted(plan.ignored)] + frozen,
                round_to=plan.round_to,
                num_heads=heads,
                customized_pruners=custom_pruners(model),
            )
    except Exception as e:
        raise DfcompressError(
            f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__}: {e}"
        ) from e


def _prune_once(
    model: nn.Module,
    example_inputs: torch.Tensor,
    calibration: Iterable[Any] | torch.Tensor | None,
    plan: _Plan,
    *,
    cautious: bool,
    avoid: set[str],
) -> tuple[int, set[str]]:
    """Prune ``model`` in place once; groups touching ``avoid`` stay whole.

    Returns:
        The number of channel groups kept whole, and the layers among them whose
        channels a permute moved before a flatten.
    """
    by_name = dict(model.named_modules())
    imp = GuardedImportance(
        _importance(plan.importance),
        cautious=cautious,
        avoid={by_name[n] for n in avoid if n in by_name},
    )
    pruner = _make_pruner(model, example_inputs, imp, plan)
    if plan.importance == "taylor":
        x = (
            calibration_batch(model, calibration, n_samples=16)
            if calibration is not None
            else example_inputs
        )
        model.zero_grad()
        loss = _self_supervised_loss(output_tensors(model(x)))
        torch.autograd.backward(loss)
    names = {m: n for n, m in model.named_modules()}
    groups = iter(pruner.step(interactive=True))
    last: str | None = None
    while True:
        try:
            group = next(groups)
        except StopIteration:
            break
        except Exception as e:
            where = "the first channel group" if last is None else f"the group after {last!r}"
            raise _BrokenGraph(
                f"torch-pruning cannot score {where} of {type(model).__name__}: "
                f"{type(e).__name__}: {e}; keep the layers involved whole with "
                "ignore=dfcompress.by_name(...) naming them",
                last,
            ) from e
        layer = group[0].dep.target.module
        last = names.get(layer, type(layer).__name__)
        try:
            group.prune()
        except Exception as e:
            raise _BrokenGraph(
                f"cannot prune the channels of layer {last!r}: {type(e).__name__}: {e}", last
            ) from e
    model.zero_grad(set_to_none=True)
    fix_after_pruning(model)
    return imp.skipped, {names.get(m, type(m).__name__) for m in imp.reordered}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _names(model: nn.Module, modules: Iterable[nn.Module]) -> set[str]:
    names = {m: n for n, m in model.named_modules()}
    return {names[m] for m in modules}


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

    Channel groups that torch-pruning cannot score, or that run through a
    ``torch.split`` with a list of sizes, keep their channels. When the pruned
    graph no longer runs (a coupling torch-pruning follows wrongly), pruning is
    redone from the original weights with the groups that cross any split, and
    those of the layer that failed, kept whole; up to three passes.

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
    _importance(importance)  # validate before any work
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
    ratios: dict[str, float] = {}
    if isinstance(amount, Mapping):
        default = 0.0
        for key, value in amount.items():
            a = check_amount(value, f"amount[{key!r}]")
            hits = as_selector(key).resolve(model)
            if not hits:
                raise DfcompressError(f"amount key {key!r} matched no layer")
            ratios.update({n: a for n in _names(model, hits.values())})
    else:
        default = check_amount(amount)
    plan = _Plan(importance, default, ratios, _names(model, ignored), global_pruning, round_to)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reference = _forward_naming_failure(model, example_inputs)
    original = copy.deepcopy(model)
    avoid: set[str] = set()
    failures: list[str] = []
    skipped = 0
    reordered: set[str] = set()
    work = model
    for attempt in range(_PASSES):
        if attempt:
            work = copy.deepcopy(original)
        try:
            skipped, reordered = _prune_once(
                work, example_inputs, calibration, plan, cautious=attempt > 0, avoid=avoid
            )
            with torch.no_grad():
                out = _forward_naming_failure(work, example_inputs)
            changed = output_shape_change(reference, out, original, work, ignore)
            if changed is not None:
                raise _BrokenGraph(changed)
            break
        except _BrokenGraph as e:
            if attempt == _PASSES - 1:
                raise DfcompressError(str(e)) from e
            avoid |= e.modules
            failures.append(str(e))
    if skipped and _n_params(work) == _n_params(original):
        first = f" (the first pass: {failures[0]})" if failures else ""
        if reordered:
            first += (
                f"; the channels of {', '.join(repr(n) for n in sorted(reordered))} are "
                "permuted before a flatten (channels-last), which torch-pruning maps to "
                "the wrong inputs of the next layer"
            )
        raise DfcompressError(
            f"no channel of {type(model).__name__} could be pruned: torch-pruning cannot "
            f"follow the {skipped} channel groups it found (splits, reshapes or couplings "
            f"it maps wrongly){first}; prune another way (method='l1') or name layers in "
            "amount="
        )
    if work is not model:
        # a later pass pruned a copy: move its state into the model returned
        model.__dict__.update(work.__dict__)
    model.train(was_training)
    return model
