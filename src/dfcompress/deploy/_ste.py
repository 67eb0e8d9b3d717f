"""Remove straight-through-estimator terms from an exported graph before it is quantized.

Binary and quantization-aware research code writes its straight-through estimators
as detach arithmetic, e.g. ``sign(x) + (c - c.detach())`` with ``c = clamp(x)``, or
``f.detach() - c.detach() + c``. The extra terms are exactly zero in the forward
pass and only shape the gradient. Left in an int8 graph they become quantized
tensors of a zero range (scale ~1e-7) added to values a million times larger,
which XNNPACK refuses when it runs the file (``xnn_status_invalid_parameter``),
and they cost a clamp, a subtraction and an addition per activation. The graph the
runtime receives computes the same forward without them.
"""

from __future__ import annotations

import torch
from torch import fx

__all__ = ["drop_straight_through"]

_aten = torch.ops.aten
_DETACH = {_aten.detach.default, _aten.alias.default}
_ADD = {_aten.add.Tensor}
_SUB = {_aten.sub.Tensor}


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _detached(node: object) -> fx.Node | None:
    """The node ``node`` detaches (through any chain of detaches), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in _DETACH:
        return None
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return None
    return _detached(src) or src


def _zero_difference(node: object) -> bool:
    """``node`` is ``c - c.detach()``: zero in the forward pass."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in _SUB:
        return False
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
        return False
    c, d = node.args
    return isinstance(c, fx.Node) and _detached(d) is c


def _forward_value(add: fx.Node) -> fx.Node | None:
    """What ``add`` equals in the forward pass when it is a straight-through sum, else None.

    - ``a + (c - c.detach())`` or ``(c - c.detach()) + a``: ``a``;
    - ``(f.detach() - c.detach()) + c`` and ``(f - c).detach() + c``: ``f``.
    """
    if add.target not in _ADD or add.kwargs.get("alpha", 1) != 1 or len(add.args) != 2:
        return None
    left, right = add.args
    for a, term in ((left, right), (right, left)):
        if _zero_difference(term) and isinstance(a, fx.Node):
            return a
    for term, c in ((left, right), (right, left)):
        if not isinstance(c, fx.Node) or not isinstance(term, fx.Node):
            continue
        inner = _detached(term)  # (f - c).detach()
        diff = inner if inner is not None else term
        if diff.op != "call_function" or diff.target not in _SUB or len(diff.args) != 2:
            continue
        if diff.kwargs.get("alpha", 1) != 1:
            continue
        f, minus = diff.args
        if not isinstance(f, fx.Node):
            continue
        if inner is not None and minus is c:
            return f
        kept = _detached(f) if inner is None and _detached(minus) is c else None
        if kept is not None:
            return kept
    return None


def drop_straight_through(graph: fx.GraphModule) -> int:
    """Replace each straight-through sum in ``graph`` by its forward value; the count.

    A sum is replaced only where the value it keeps has the sum's own shape and dtype,
    so broadcasting never changes. Dead nodes are removed.
    """
    done = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        value = _forward_value(node)
        if value is None or _shape(value) is None or _shape(value) != _shape(node):
            continue
        old, new = node.meta.get("val"), value.meta.get("val")
        if getattr(old, "dtype", None) != getattr(new, "dtype", None):
            continue
        node.replace_all_uses_with(value)
        done += 1
    if done:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return done
