"""Fold BatchNorm layers into the convolution that feeds them.

Quantizing the folded weight is what an int8 runtime executes, so the
observers must see it, and a folded model stores no BatchNorm statistics.
Pairs are found by tracing the model with ``torch.fx`` (a conv whose only user
is a BatchNorm). When a model cannot be traced (data-dependent control flow, as
in timm's models), one forward pass on a random probe input records which
BatchNorm reads which conv's output; those folds are kept only if the probe's
output is unchanged by them. Without a probe (no conv to infer an input shape
from), pairs come from adjacency inside ``nn.Sequential`` containers.

BatchNorm subclasses that apply an activation after normalizing (timm's
``BatchNormAct2d``: children ``drop`` and ``act``) fold too: the activation stays,
in a :class:`FoldedBatchNorm`, when it is one of ReLU, ReLU6, SiLU, GELU,
Hardswish, Hardsigmoid, Sigmoid, Tanh, LeakyReLU, ELU or Identity.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn

from dfcompress._modes import eval_mode
from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError

_log = logging.getLogger("dfcompress")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


_ACTS: dict[str, type[nn.Module]] = {
    c.__name__: c
    for c in (
        nn.ReLU,
        nn.ReLU6,
        nn.SiLU,
        nn.GELU,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Sigmoid,
        nn.Tanh,
        nn.LeakyReLU,
        nn.ELU,
        nn.Identity,
    )
}


def _act_spec(act: nn.Module) -> dict[str, Any] | None:
    """JSON form of a parameter-free activation, or None when it is not a known one."""
    name = type(act).__name__
    if _ACTS.get(name) is not type(act):
        return None
    if isinstance(act, nn.LeakyReLU):
        return {"name": name, "negative_slope": act.negative_slope}
    if isinstance(act, nn.ELU):
        return {"name": name, "alpha": act.alpha}
    if isinstance(act, nn.GELU):
        return {"name": name, "approximate": act.approximate}
    return {"name": name}


@register_module("quant.folded_bn")
class FoldedBatchNorm(nn.Identity):
    """Stands where a BatchNorm was folded into the preceding convolution.

    Args:
        act: The activation a BatchNorm-plus-activation layer applied after
            normalizing (kept), or None for a plain BatchNorm (the identity).

    >>> FoldedBatchNorm(nn.ReLU())(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
    """

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)

    def dfc_spec(self) -> dict[str, Any]:
        """The kept activation, if any."""
        return {} if self.act is None else {"act": _act_spec(self.act)}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> FoldedBatchNorm:
        """A new folded BatchNorm with the same activation."""
        act = spec.get("act")
        if act is None:
            return cls()
        kind = _ACTS.get(str(act.get("name")))
        if kind is None:
            raise DfcompressError(f"unknown activation {act!r} in a folded BatchNorm")
        return cls(kind(**{k: v for k, v in act.items() if k != "name"}))


def _replacement(bn: nn.Module) -> FoldedBatchNorm | None:
    """What stands in for ``bn`` once folded, or None if its forward does more than we know."""
    base = next(c for c in _BNS if isinstance(bn, c))
    if type(bn).forward is base.forward:
        return FoldedBatchNorm()
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if not isinstance(act, nn.Module) or _act_spec(act) is None:
        return None
    if drop is not None and not isinstance(drop, (nn.Identity, nn.Dropout)):
        return None
    extra = {n for n, _ in bn.named_children()} - {"act", "drop"}
    return FoldedBatchNorm(act) if not extra else None


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and isinstance(bn, _BNS)
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
        and _replacement(bn) is not None
    )


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BatchNorm only ever sees that conv's output.

    Pairs found by a probe forward (untraceable models) are candidates that
    :func:`fold_batchnorms` checks before keeping.
    """
    modules = dict(model.named_modules())
    try:
        import torch.fx

        from dfcompress._fx import TRACE_LOCK, ThreadSafeTracer, trace

        class _Tracer(ThreadSafeTracer):
            # BatchNorm subclasses (BatchNorm + activation) stay one call, like nn's own.
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return isinstance(m, _BNS) or super().is_leaf_module(m, qualname)

        with TRACE_LOCK:
            gm = torch.fx.GraphModule(model, trace(_Tracer(), model))
    except Exception:  # any tracing failure means: use the fallback
        probed = _probe_pairs(model)
        return _sequential_pairs(model) if probed is None else probed
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


def _probe_input(model: nn.Module) -> torch.Tensor | None:
    from dfcompress._datafree import default_input_shape

    try:
        shape = default_input_shape(model)
    except DfcompressError:
        return None
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    return torch.randn((2, *shape), generator=gen).to(dev)


def _run_probe(model: nn.Module, x: torch.Tensor) -> Any:
    with eval_mode(model), torch.no_grad():
        return model(x)


def _probe_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """Pairs seen in one forward: a BatchNorm whose input is the output of a conv called once."""
    x = _probe_input(model)
    if x is None:
        return None
    # Both sides keep their tensors: an id is only unique while its object lives, and
    # a BatchNorm input freed early would share its id with a later conv's output.
    outputs: dict[int, tuple[str, Any]] = {}
    calls: dict[str, int] = {}
    reads: dict[str, Any] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, _CONVS):

            def after(m: nn.Module, a: Any, out: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                outputs[id(out)] = (name, out)

            handles.append(mod.register_forward_hook(after))
        elif isinstance(mod, _BNS):

            def before(m: nn.Module, a: tuple[Any, ...], name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                reads[name] = a[0] if a else None

            handles.append(mod.register_forward_pre_hook(before))
    try:
        _run_probe(model, x)
    except Exception:  # a model the random probe cannot run: use the fallback
        return None
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    pairs = []
    for b, seen in reads.items():
        made = outputs.get(id(seen))
        if made is None or made[1] is not seen:
            continue
        c = made[0]
        if calls.get(c) != 1 or calls.get(b) != 1:
            continue
        if _foldable(modules[c], modules[b]):
            pairs.append((c, b))
    return pairs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or not a.is_floating_point():
            return bool(torch.equal(a, b))
        tol = 1e-3 * float(b.abs().max().clamp_min(1.0))
        return bool(torch.allclose(a, b, rtol=1e-3, atol=tol))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(_same(a[k], b[k]) for k in a)
    return False


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
    pairs = [(c, b) for c, b in find_conv_bn_pairs(model) if c in convs]
    probe = None if not pairs else _probe_input(model)
    reference = None
    if probe is not None:
        try:
            reference = _run_probe(model, probe)
        except Exception:  # a model the probe cannot run: keep the pairs found structurally
            probe = None
    saved: list[tuple[str, Any, torch.Tensor, Any, str, nn.Module]] = []
    for c, b in pairs:
        conv: Any = model.get_submodule(c)
        bn = model.get_submodule(b)
        new = _replacement(bn)
        if new is None:  # pragma: no cover - _foldable checked it
            continue
        saved.append((c, conv, conv.weight.detach().clone(), conv.bias, b, bn))
        fold_bn_into_conv(conv, bn)
        _set_submodule(model, b, new)
    if probe is not None and saved and not _same(_run_probe(model, probe), reference):
        # A conv output read elsewhere too, or a BatchNorm used differently than it
        # looked: undo every fold rather than change what the model computes.
        with torch.no_grad():
            for _c, conv, weight, bias, b, bn in saved:
                conv.weight.copy_(weight)
                conv.bias = bias
                _set_submodule(model, b, bn)
        _log.info("dfcompress: BatchNorm folding changed the model's output; left unfolded")
        return []
    folded = [b for *_, b, _bn in saved]
    if folded:
        _log.info("dfcompress: folded %d BatchNorm layers into their convolutions", len(folded))
    return folded
