"""GPTQ rounding of a PT2E-converted graph: the int8 weight codes the file will hold.

For every conv2d/linear node whose weight is dequantized per channel from int8
codes, one pass of the calibration data through the converted graph adds up
the Gram matrix of the inputs the node gets (the dequantized activations the
runtime computes on); then :func:`dfcompress.quant._gptq.gptq_round` chooses
the codes from the float weight, with the graph's own scales, and the codes are
written back into the graph. The exported ``.pte`` holds those codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from dfcompress.deploy._pt2e_bias import _attr
from dfcompress.quant._gptq import MAX_COLUMNS, Geometry, gptq_round, gram

__all__ = ["gptq_graph"]

_DEQUANT = torch.ops.quantized_decomposed.dequantize_per_channel.default
_CONV2D = torch.ops.aten.conv2d.default
_LINEAR = torch.ops.aten.linear.default


def _as_int(v: Any) -> int:
    return int(v)


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _geometry(node: fx.Node, weight: torch.Tensor) -> Geometry:
    if node.target is _LINEAR:
        return None
    args: list[Any] = list(node.args) + [None] * (7 - len(node.args))
    stride = _pair(args[3] if args[3] is not None else 1)
    padding = _pair(args[4] if args[4] is not None else 0)
    dilation = _pair(args[5] if args[5] is not None else 1)
    groups = int(args[6]) if args[6] is not None else 1
    return (tuple(int(k) for k in weight.shape[2:]), stride, padding, dilation, groups)


def _codes_node(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The dequantize node of ``node``'s weight, when it reads int8 codes from an attribute."""
    dq = node.args[1] if len(node.args) > 1 else None
    if not isinstance(dq, fx.Node) or dq.target is not _DEQUANT:
        return None
    codes, scale, zp = dq.args[0], dq.args[1], dq.args[2]
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (codes, scale, zp)):
        return None
    if _as_int(dq.args[3]) != 0:
        return None  # per-channel along the output axis only
    return dq


class _Grams(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, geoms: dict[str, Geometry]) -> None:
        super().__init__(gm)
        self.geoms = geoms
        self.grams: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.geoms:
            args, _ = self.fetch_args_kwargs_from_env(n)
            g = gram(args[0], self.geoms[n.name])
            self.grams[n.name] = g if n.name not in self.grams else self.grams[n.name] + g
        return super().run_node(n)


def gptq_graph(
    gm: fx.GraphModule, weights: dict[str, torch.Tensor], data: Iterable[torch.Tensor]
) -> int:
    """GPTQ-round the int8 weights of ``gm`` (in place) from their float ``weights``.

    Args:
        gm: A converted graph whose weights are int8 codes dequantized per channel.
        weights: ``{node name: float weight}`` (see ``_pt2e_bias.float_weights``).
        data: Calibration batches.

    Returns:
        How many layers' codes changed.
    """
    targets: dict[str, tuple[fx.Node, Geometry]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (_CONV2D, _LINEAR):
            continue
        w = weights.get(node.name)
        dq = _codes_node(gm, node)
        if w is None or dq is None or w[0].numel() > MAX_COLUMNS:
            continue
        targets[node.name] = (dq, _geometry(node, w))
    if not targets:
        return 0
    run = _Grams(gm, {k: g for k, (_, g) in targets.items()})
    with torch.no_grad():
        for x in data:
            run.run(x)
    changed = 0
    with torch.no_grad():
        for name, (dq, _) in targets.items():
            h = run.grams.get(name)
            if h is None:
                continue
            codes_node, scale_node, zp_node = (a for a in dq.args[:3] if isinstance(a, fx.Node))
            old = _attr(gm, str(codes_node.target))
            w = weights[name].float()
            view = [-1] + [1] * (w.dim() - 1)
            s = _attr(gm, str(scale_node.target)).float().reshape(view)
            z = _attr(gm, str(zp_node.target)).float().reshape(view)
            qmin, qmax = _as_int(dq.args[4]), _as_int(dq.args[5])
            chosen, e_near, e_kept = gptq_round(w, s, z, qmin, qmax, h)
            if not bool((e_kept < e_near).any()):
                continue
            codes = torch.clamp(torch.round(chosen.double() / s.double()) + z, qmin, qmax)
            new = codes.to(old.dtype)
            if torch.equal(new, old):
                continue
            owner, _, leaf = str(codes_node.target).rpartition(".")
            parent = _attr(gm, owner) if owner else gm
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=False)
            setattr(parent, leaf, new)
            changed += 1
    gm.recompile()
    return changed
