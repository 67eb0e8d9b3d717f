"""Sign activations as XNNPACK int8 ops, so a binary network stays in one partition.

A binary activation ``(x >= 0) * 2 - 1`` quantizes to a comparison, a cast and two
int8 ops. XNNPACK has no comparison, so ExecuTorch runs each sign in its portable
kernels, between two XNNPACK partitions, with float conversions at both ends
(BNext-tiny: 31 signs, 35 partitions, an int8 file 1.2x faster than the float one
at 224 px).

With ``x`` on the int8 grid of scale ``s``, ``x >= 0`` exactly when ``x + s/2 > 0``,
and ``x + s/2`` is at least ``s/2`` away from 0. Written to a scale
``S = s / 255.5`` it saturates: every code is 127 or -128 (``|x + s/2| / S >= 127.75``,
never a tie), and a clamp to ``[-127 S, 127 S]`` makes the two values symmetric,
``±127 S``. Dividing the per-channel weight scales of the convolutions that read
it by ``127 S`` makes them multiply exactly ``±1``, the float model's signs, with an
add and a clamp XNNPACK runs in int8 (``S`` keeps the add's input-to-output scale
ratio below XNNPACK's 2**8 limit). The quantized chain it replaces wrote the signs
on the 8-bit grid of ``[-1, 1]``, where +1 and -1 are no codes: they came out as
``+1.0039`` and ``-0.9961`` (a rounding tie each), so the eager model moves by
about a rounding step (and the file with it: they stay equal).

A float file has the same comparison between partitions. There ``x >= 0`` is
``clamp(x * 2**100 * 2**49, -1, 0) + 1``, exactly: multiplying by powers of two
is exact, the smallest negative float (``-2**-149``) becomes -1, every other
negative value -1 or below, and zero (either sign) or a positive value 0 or
above; the clamp leaves -1 or 0 (two multiplies: ``2**149`` is no float32). A
negative subnormal input is the one difference where a runtime flushes subnormals
to zero.
"""

from __future__ import annotations

import torch
from torch import fx

from dfcompress.deploy._xnnpack_rewrites import _DQ, _DQC, _QT

__all__ = ["delegate_signs", "float_signs"]

_aten = torch.ops.aten
_ASSERT = _aten._assert_tensor_metadata.default


def _users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if u.target is not _ASSERT]


def _only(node: fx.Node, target: object | None = None) -> fx.Node | None:
    users = _users(node)
    if len(users) != 1 or (target is not None and users[0].target is not target):
        return None
    return users[0]


def _sign_chain(ge: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(dequantized input, quantized sign)`` of ``ge(x, 0) -> to -> q -> dq -> *2 -> q
    -> dq -> -1 -> q``, else None."""
    x = ge.args[0]
    if not isinstance(x, fx.Node) or x.target is not _DQ or ge.args[1:] != (0,):
        return None
    node: fx.Node | None = _only(ge)
    if node is None or node.target not in (_aten.to.dtype, _aten._to_copy.default):
        return None
    for op in (_aten.mul.Tensor, _aten.sub.Tensor):
        q = _only(node, _QT)
        dq = _only(q, _DQ) if q is not None else None
        node = _only(dq, op) if dq is not None else None
        if node is None:
            return None
    q = _only(node, _QT)
    return (x, q) if q is not None else None


def _weight_scales(q: fx.Node, graph: fx.GraphModule) -> list[str] | None:
    """The per-channel weight-scale attributes of the convolutions reading ``q``, if
    every reader is such a convolution whose scales no other node reads."""
    names: list[str] = []
    for dq in q.users:
        if dq.target is not _DQ:
            return None
        for conv in dq.users:
            if conv.target is not _aten.conv2d.default or conv.args[0] is not dq:
                return None
            w = conv.args[1]
            if not isinstance(w, fx.Node) or w.target is not _DQC:
                return None
            scale = w.args[1]
            if not isinstance(scale, fx.Node) or scale.op != "get_attr" or len(scale.users) != 1:
                return None
            names.append(str(scale.target))
    return names or None


def delegate_signs(graph: fx.GraphModule) -> int:
    """Rewrite each int8 sign activation of ``graph`` as add + clamp; the count rewritten.

    A sign is rewritten only where every reader of it is a convolution with
    per-channel int8 weights (their scales are what absorbs the new grid).
    """
    g = graph.graph
    rewritten: list[fx.Node] = []
    for ge in list(g.find_nodes(op="call_function", target=_aten.ge.Scalar)):
        chain = _sign_chain(ge)
        if chain is None:
            continue
        x, q_sign = chain
        names = _weight_scales(q_sign, graph)
        if names is None:
            continue
        s = float(x.args[1])  # type: ignore[arg-type]
        if s <= 0:
            continue
        grid = s / 255.5
        half = f"_dfc_sign_half_{len(rewritten)}"
        # s/2 as code 100 of scale s/200: exact enough (it only has to stay off 0)
        graph.register_buffer(half, torch.tensor([100], dtype=torch.int8))
        with g.inserting_before(ge):
            code = g.get_attr(half)
            offset = g.call_function(_DQ, (code, s / 200.0, 0, -128, 127, torch.int8))
            shifted = g.call_function(_aten.add.Tensor, (x, offset))
            q_shift = g.call_function(_QT, (shifted, grid, 0, -128, 127, torch.int8))
            dq_shift = g.call_function(_DQ, (q_shift, grid, 0, -128, 127, torch.int8))
            clamped = g.call_function(_aten.clamp.default, (dq_shift, -127 * grid, 127 * grid))
            q_new = g.call_function(_QT, (clamped, grid, 0, -128, 127, torch.int8))
        for name in names:  # the conv sees exactly +-1, the float model's signs
            setattr(graph, name, getattr(graph, name) / (127 * grid))
        for dq in list(q_sign.users):
            with g.inserting_after(q_new):
                twin = g.call_function(_DQ, (q_new, grid, 0, -128, 127, torch.int8))
            dq.replace_all_uses_with(twin)
        rewritten.append(ge)
    if rewritten:
        for ge in rewritten:  # the dtype checks torch.export left on the old comparison
            for check in [u for u in ge.users if u.target is _ASSERT]:
                g.erase_node(check)
        g.eliminate_dead_code()
        graph.recompile()
    return len(rewritten)


#: Powers of two whose product maps the smallest float32 subnormal to 1.
_BIG = (2.0**100, 2.0**49)
_CASTS = (_aten.to.dtype, _aten._to_copy.default)


def float_signs(graph: fx.GraphModule) -> int:
    """Rewrite each float32 ``(x >= 0).to(float32)`` of a float graph with multiplies,
    a clamp and an add, which XNNPACK runs; the count."""
    g = graph.graph
    done = 0
    for ge in list(g.find_nodes(op="call_function", target=_aten.ge.Scalar)):
        x, cast = ge.args[0], _only(ge)
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        out = cast.meta.get("val") if cast is not None else None
        if cast is None or cast.target not in _CASTS or ge.args[1:] != (0,):
            continue
        if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor):
            continue
        if val.dtype != torch.float32 or out.dtype != torch.float32:
            continue
        if not done:  # float32 tensors (a Python float would be copied on every run)
            for i, value in enumerate(_BIG):
                graph.register_buffer(f"_dfc_sign_big_{i}", torch.tensor(value))
        with g.inserting_before(ge):
            big = x
            for i in range(len(_BIG)):
                big = g.call_function(_aten.mul.Tensor, (big, g.get_attr(f"_dfc_sign_big_{i}")))
            low = g.call_function(_aten.clamp.default, (big, -1.0, 0.0))
            mask = g.call_function(_aten.add.Tensor, (low, 1.0))
        cast.replace_all_uses_with(mask)
        for check in [u for u in ge.users if u.target is _ASSERT]:
            g.erase_node(check)
        done += 1
    if done:
        g.eliminate_dead_code()
        graph.recompile()
    return done
