"""Cross-layer equalization: even out the per-channel weight ranges of consecutive convolutions.

For two layers ``y = W2 act(W1 x + b1) + b2`` and an activation that commutes
with positive per-channel scaling (``act(z / s) = act(z) / s``: ReLU,
LeakyReLU, the identity), dividing output channel ``i`` of the first layer (its
weights and bias) by ``s_i`` and multiplying the weights that read channel
``i`` in the second layer by ``s_i`` leaves the function unchanged. With
``s_i = sqrt(r1_i / r2_i)``, ``r1_i`` the largest ``|W1|`` of output channel
``i`` and ``r2_i`` the largest ``|W2|`` reading input channel ``i``, both
layers end with the range ``sqrt(r1_i * r2_i)`` in that channel (Nagel et al.,
2019, "Data-Free Quantization"): a depthwise convolution whose channels differ
by orders of magnitude after BatchNorm folding hands its extremes to the
layers around it. No data is needed.

ReLU6 does not commute with the scaling: ``min(max(z, 0), 6)`` on ``z / s`` is
``min(max(z, 0), 6 s) / s``. Where a ReLU6 stands between an equalized pair it is
replaced by a :class:`ChannelClamp` whose upper bound is ``6 / s_i`` per
channel, so the model computes exactly what it computed before (a per-channel
``Clip``, which runtimes execute as a ``Max`` and a ``Min``).

Pairs are found by tracing the model with ``torch.fx``: a conv (or linear)
whose output goes, through nothing but single-user activations and folded
BatchNorm placeholders, to exactly one other conv. A probe forward checks the
model's output is unchanged; otherwise every change is undone.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from dfcompress._rebuild import register_module
from dfcompress.quant._bnfold import FoldedBatchNorm, _probe_input, _run_probe, _same
from dfcompress.quant._equalize import channel_minmax, scale_weight_columns, weight_column_max

__all__ = [
    "RANGE_CAP",
    "ChannelClamp",
    "equalize_activation_ranges",
    "equalize_pairs",
    "find_pairs",
]

_log = logging.getLogger("dfcompress")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register_module("quant.channel_clamp")
class ChannelClamp(nn.Module):
    """``min(max(x, 0), upper)`` with one upper bound per channel (dim 1).

    Stands where a ReLU6 was when the channels it reads were rescaled by
    cross-layer equalization.

    Args:
        upper: The per-channel upper bounds, shape ``(C,)``.

    >>> ChannelClamp(torch.tensor([1.0, 3.0]))(torch.tensor([[2.0, 2.0], [-1.0, 5.0]]))
    tensor([[1., 2.],
            [0., 3.]])
    """

    upper: torch.Tensor

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[1 if x.dim() > 1 else 0] = -1
        return torch.minimum(x.clamp_min(0), self.upper.to(x.dtype).reshape(shape))

    def dfc_spec(self) -> dict[str, Any]:
        """The number of channels (the bounds are in the state dict)."""
        return {"channels": int(self.upper.numel())}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> ChannelClamp:
        """An unbounded clamp of the recorded size (bounds come with the state dict)."""
        return cls(torch.full((int(spec["channels"]),), float("inf")))


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _passes_scaling(mod: nn.Module, batchnorm: bool = False) -> bool:
    """Whether ``mod`` is an elementwise activation that equalization can cross
    (with ``batchnorm``, also an affine BatchNorm, whose weight and bias carry the factor)."""
    if isinstance(mod, FoldedBatchNorm):
        return mod.act is None or _passes_scaling(mod.act)
    if isinstance(mod, (nn.ReLU, nn.Identity, nn.LeakyReLU, nn.Dropout, ChannelClamp)):
        return True
    if batchnorm and isinstance(mod, _BATCHNORMS):
        return bool(mod.affine)
    return isinstance(mod, nn.ReLU6)


def find_pairs(
    model: nn.Module, names: set[str], through_batchnorm: bool = False
) -> list[tuple[str, list[str], str]]:
    """``(first, between, second)``: layers of ``names`` that equalization may rescale together.

    ``between`` lists the activation modules in between (in order), and with
    ``through_batchnorm`` the affine BatchNorm layers there (a float model whose
    BatchNorm is not folded). Empty when the model cannot be traced.
    """
    modules = dict(model.named_modules())
    try:
        from dfcompress._fx import TRACE_LOCK, ThreadSafeTracer, trace

        class _Tracer(ThreadSafeTracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return isinstance(m, (FoldedBatchNorm, ChannelClamp)) or super().is_leaf_module(
                    m, qualname
                )

        with TRACE_LOCK:
            graph = trace(_Tracer(), model)
    except Exception:  # an untraceable model: no pairs (equalization is an optimisation)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        first = str(node.target)
        if node.op != "call_module" or first not in names or calls.get(first) != 1:
            continue
        between: list[str] = []
        cur = node
        while len(cur.users) == 1:
            (user,) = cur.users
            target = str(user.target)
            if user.op != "call_module" or calls.get(target) != 1 or user.args[:1] != (cur,):
                break
            mod = modules.get(target)
            if target in names and isinstance(mod, (*_CONVS, nn.Linear)):
                pairs.append((first, between, target))
                break
            if mod is None or not _passes_scaling(mod, through_batchnorm):
                break
            between.append(target)
            cur = user
    return pairs


def _out_ranges(layer: Any) -> torch.Tensor:
    w: torch.Tensor = layer.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def _in_ranges(layer: Any) -> torch.Tensor:
    return weight_column_max(layer.weight, int(getattr(layer, "groups", 1)))


@torch.no_grad()
def _equalize_pair(
    model: nn.Module, first: str, between: list[str], second: str, ratio_cap: float
) -> None:
    a: Any = model.get_submodule(first)
    b: Any = model.get_submodule(second)
    if a.weight.shape[0] != _in_ranges(b).numel():
        return  # a reshape or flatten between them: channels do not line up
    r1, r2 = _out_ranges(a), _in_ranges(b)
    live = (r1 > 0) & (r2 > 0)
    s = torch.where(live, (r1 / r2.clamp_min(1e-30)).sqrt(), torch.ones_like(r1))
    s = s.clamp(1.0 / ratio_cap, ratio_cap)
    a.weight.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))
    if a.bias is not None:
        a.bias.div_(s)
    b.weight.copy_(scale_weight_columns(b.weight, s, int(getattr(b, "groups", 1))))
    for name in between:
        act = model.get_submodule(name)
        inner = act.act if isinstance(act, FoldedBatchNorm) else act
        if isinstance(inner, ChannelClamp):
            inner.upper.div_(s.to(inner.upper.device))
        elif isinstance(inner, nn.ReLU6):
            clamp = ChannelClamp((6.0 / s).to(a.weight.device))
            if isinstance(act, FoldedBatchNorm):
                act.act = clamp
            else:
                from dfcompress.quant._bnfold import _set_submodule

                _set_submodule(model, name, clamp)


def _undone_if_changed(
    model: nn.Module,
    probe: torch.Tensor | None,
    reference: Any,
    backup: dict[str, nn.Module],
    what: str,
) -> bool:
    """Put the ``backup`` modules back when the output on ``probe`` moved; whether it did."""
    if probe is None or _same(_run_probe(model, probe), reference):
        return False
    from dfcompress.quant._bnfold import _set_submodule

    for n, m in backup.items():
        _set_submodule(model, n, m)
    _log.info("dfcompress: %s changed the model's output; undone", what)
    return True


def equalize_pairs(
    model: nn.Module, names: set[str], iterations: int = 4, ratio_cap: float = 1e4
) -> list[tuple[str, str]]:
    """Cross-layer equalize every pair of ``names`` found in ``model`` (in place).

    Runs ``iterations`` sweeps over the pairs (a layer in two pairs, such as a
    depthwise convolution, moves with both). Each factor is kept within
    ``[1 / ratio_cap, ratio_cap]``. Returns the equalized pairs; when a probe
    forward shows the model's output changed, everything is undone and the
    list is empty.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)).eval()
    >>> with torch.no_grad():
    ...     _ = net[0].weight[0].mul_(50.0)
    >>> x = torch.randn(2, 3, 5, 5)
    >>> before = net(x)
    >>> equalize_pairs(net, {"0", "2"})
    [('0', '2')]
    >>> type(net[1]).__name__, bool(torch.allclose(net(x), before, atol=1e-5))
    ('ChannelClamp', True)
    """
    pairs = find_pairs(model, names)
    if not pairs:
        return []
    probe = _probe_input(model)
    reference = None if probe is None else _run_probe(model, probe)
    saved = {n: m for n, m in model.named_modules() if n in names or any(n in p[1] for p in pairs)}
    backup = {n: copy.deepcopy(m) for n, m in saved.items()}
    for _ in range(iterations):
        for first, between, second in pairs:
            _equalize_pair(model, first, between, second, ratio_cap)
    if _undone_if_changed(model, probe, reference, backup, "cross-layer equalization"):
        return []
    _log.info("dfcompress: cross-layer equalized %d pairs of layers", len(pairs))
    return [(f, s) for f, _b, s in pairs]


#: The largest factor :func:`equalize_activation_ranges` multiplies a channel by.
RANGE_CAP = 16.0


def _lines_up(first: nn.Module, second: nn.Module) -> bool:
    """Whether ``first``'s output channels are ``second``'s input channels."""
    w = getattr(first, "weight", None)
    return isinstance(w, torch.Tensor) and w.shape[0] == getattr(second, "in_channels", -1)


def _channel_maxima(
    model: nn.Module, data: Iterable[Any] | torch.Tensor, layers: list[str], max_samples: int
) -> dict[str, torch.Tensor]:
    """The largest ``|x|`` of each input channel of ``layers`` over ``data``."""
    from dfcompress._data import iter_inputs
    from dfcompress._modes import eval_mode

    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(_mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            lo, hi = channel_minmax(inputs[0], 1)
            m = torch.maximum(-lo, hi).float()
            seen[name] = torch.maximum(seen[name], m) if name in seen else m

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for x in iter_inputs(data, limit=max_samples):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _scale_channels(
    model: nn.Module, first: str, between: list[str], second: str, k: torch.Tensor
) -> None:
    """Multiply channel ``i`` between ``first`` and ``second`` by ``k[i]``; ``second`` undoes it."""
    bns = [model.get_submodule(n) for n in between]
    bn: Any = next((m for m in bns if isinstance(m, _BATCHNORMS)), None)
    if bn is not None:  # the BatchNorm's affine map carries the factor
        bn.weight.mul_(k.to(bn.weight.dtype))
        bn.bias.mul_(k.to(bn.bias.dtype))
    else:
        a: Any = model.get_submodule(first)
        a.weight.mul_(k.to(a.weight.dtype).reshape(-1, *([1] * (a.weight.dim() - 1))))
        if a.bias is not None:
            a.bias.mul_(k.to(a.bias.dtype))
    for m in bns:
        inner = m.act if isinstance(m, FoldedBatchNorm) else m
        if isinstance(inner, ChannelClamp):
            inner.upper.mul_(k.to(inner.upper.device))
    b: Any = model.get_submodule(second)
    b.weight.copy_(scale_weight_columns(b.weight, 1.0 / k, int(b.groups)))


def equalize_activation_ranges(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    names: set[str],
    *,
    cap: float = RANGE_CAP,
    max_samples: int = 256,
) -> list[tuple[str, str]]:
    """Even out the per-channel ranges of the inputs of depthwise convolutions (in place).

    For each layer of ``names`` whose output reaches a depthwise convolution of
    ``names`` through nothing but an affine BatchNorm and ReLU/ReLU6/LeakyReLU
    (:func:`find_pairs`), the channels' largest values ``m_i`` are measured on
    ``data``; channel ``i`` is multiplied by ``k_i = min(R / m_i, cap)`` (``R``
    the largest ``m_i``) in the first layer (or its BatchNorm's weight and bias)
    and divided out of the depthwise filter that reads it. The per-tensor input
    quantizer then gives every channel about as many codes as the widest one.

    The float model's output is unchanged wherever a channel stays within its
    calibrated range: a ReLU6 clips the scaled channel at ``6 / k_i`` of its old
    units, which is at least the largest value calibration saw there (beyond
    it, the channel is clipped as a per-tensor quantizer clips beyond its
    range). With per-output-channel weights the factors cost the weights
    nothing: they land on whole rows of the first layer and whole filters of
    the depthwise one. Returns the pairs equalized; when the output on the
    first calibration batch changes, everything is undone and the list is empty.
    """
    from dfcompress._data import iter_inputs
    from dfcompress.prune._caps import is_depthwise

    pairs = [
        p
        for p in find_pairs(model, names, through_batchnorm=True)
        if is_depthwise(model.get_submodule(p[2]))
        and _lines_up(model.get_submodule(p[0]), model.get_submodule(p[2]))
    ]
    if not pairs:
        return []
    maxima = _channel_maxima(model, data, [p[2] for p in pairs], max_samples)
    probe = next(iter(iter_inputs(data, limit=max_samples)), None)
    reference = None if probe is None else _run_probe(model, probe)
    touched = {n for f, b, s in pairs for n in (f, s, *b)}
    backup = {n: copy.deepcopy(model.get_submodule(n)) for n in touched}
    done = []
    for first, between, second in pairs:
        m = maxima.get(second)
        if m is None or not bool(m.max() > 0):
            continue
        r = m.max()
        k = (r / m.clamp_min(float(r) / cap)).clamp(1.0, cap)
        _scale_channels(model, first, between, second, k)
        done.append((first, second))
    if _undone_if_changed(model, probe, reference, backup, "activation range equalization"):
        return []
    _log.info("dfcompress: equalized the input ranges of %d depthwise convolutions", len(done))
    return done
