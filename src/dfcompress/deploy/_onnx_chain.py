"""Keep int8 tensors int8 between convolutions: Q/DQ around the cheap operators too.

After :func:`dfcompress.deploy._onnx_qdq.to_qdq` every quantized conv reads and writes int8,
but the operators between two convs (SiLU's Sigmoid and Mul, squeeze-and-excitation
gates, residual Adds, pooling) still dequantize to float, compute, and quantize
again. ONNX Runtime has integer kernels for them (QLinearSigmoid, QLinearMul,
QLinearAdd, QLinearGlobalAveragePool, QLinearAveragePool, QLinearLeakyRelu) and
fuses ``DQ -> op -> Q`` into them. :func:`chain_qdq` adds the missing ``Q -> DQ``
after each such operator whose inputs are all dequantized int8 tensors, with the
range observed on calibration data (Sigmoid: the fixed range [0, 1]); walking the
graph in order, one such operator makes the next one eligible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dfcompress.deploy._onnx_qdq import _INT_TYPES

__all__ = ["chain_qdq", "drop_identity_relu", "drop_requantize", "share_quantizer"]

_UNARY = frozenset({"Sigmoid", "GlobalAveragePool", "AveragePool", "LeakyRelu"})
_BINARY = frozenset({"Add", "Mul"})


def _act_zero_point(g: Any, dq: Any) -> np.ndarray | None:
    """Integer zero point of a per-tensor activation DequantizeLinear (None otherwise)."""
    if g.const(dq.input[0]) is not None:
        return None
    s = g.const(dq.input[1])
    z = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.uint8)
    if s is None or z is None or s.size != 1 or z.size != 1 or z.dtype not in _INT_TYPES:
        return None
    return z


def _act_type(g: Any, dq: Any) -> np.dtype | None:
    """Integer type of a per-tensor activation DequantizeLinear (None otherwise)."""
    z = _act_zero_point(g, dq)
    return None if z is None else z.dtype


def _act_quantizer(g: Any, node: Any) -> bool:
    """Whether ``node`` is a per-tensor QuantizeLinear (constant scale, integer zero point)."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 3:
        return False
    s, z = g.const(node.input[1]), g.const(node.input[2])
    return s is not None and z is not None and s.size == 1 and z.size == 1 and z.dtype in _INT_TYPES


def _quantizer_user(g: Any, name: str) -> Any | None:
    """A per-tensor QuantizeLinear (constant scale and integer zero point) reading ``name``."""
    for u in g.consumers().get(name, []):
        if u.input[0] == name and _act_quantizer(g, u):
            return u
    return None


def share_quantizer(g: Any, name: str) -> bool:
    """Let the float readers of ``name`` read it through the QuantizeLinear it already has.

    When a tensor feeds both a quantizer (the next layer's input quantizer) and float
    operators, giving it a second, calibrated Q/DQ would round it twice on the way
    into the next layer (DQ then Q with another scale). Instead its existing
    quantizer's output is dequantized once and read by the others. Returns whether
    such a quantizer was found.
    """
    if name in g.outputs():
        return False
    q0 = _quantizer_user(g, name)
    if q0 is None:
        return False
    deq = g.fresh(name + "_shared")
    dq = g.onnx.helper.make_node(
        "DequantizeLinear", [q0.output[0], q0.input[1], q0.input[2]], [deq]
    )
    g.graph.node.insert(list(g.graph.node).index(q0) + 1, dq)
    for u in g.consumers().get(name, []):
        if u is q0:
            continue
        for k, i in enumerate(u.input):
            if i == name:
                u.input[k] = deq
    return True


def _eligible(g: Any) -> list[tuple[Any, np.dtype]]:
    """Operators (in graph order) to give an output Q/DQ, with their integer type."""
    outputs, cons = g.outputs(), g.consumers()
    inits = set(g.inits())
    quantized: dict[str, np.dtype] = {}
    found: list[tuple[Any, np.dtype]] = []
    for n in g.graph.node:
        if n.op_type == "DequantizeLinear":
            t = _act_type(g, n)
            if t is not None:
                quantized[n.output[0]] = t
            continue
        if n.op_type not in _UNARY | _BINARY or not n.output or n.output[0] in outputs:
            continue
        ins = [i for i in n.input if i]
        ins = ins[:1] if n.op_type in _UNARY else ins
        if len(ins) != (1 if n.op_type in _UNARY else 2) or any(i in inits for i in ins):
            continue
        t = quantized.get(ins[0])
        if t is None or any(quantized.get(i) != t for i in ins):
            continue
        users = cons.get(n.output[0], [])
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            continue  # already fused as it is
        found.append((n, t))
        quantized[n.output[0]] = t
    return found


def chain_qdq(g: Any, ranges: Callable[[Sequence[str]], dict[str, tuple[float, float]]]) -> int:
    """Insert calibrated Q/DQ after eligible operators (see the module docstring).

    Args:
        g: A ``_Graph`` view of the model (modified in place).
        ranges: Observed (min, max) of named tensors on calibration data.

    Returns:
        The number of operators given an output Q/DQ.
    """
    todo = _eligible(g)
    if not todo:
        return 0
    shared = {n.output[0] for n, _ in todo if _quantizer_user(g, n.output[0]) is not None}
    names = [n.output[0] for n, _ in todo if n.op_type != "Sigmoid" and n.output[0] not in shared]
    seen = ranges(names) if names else {}
    for n, t in todo:
        if n.output[0] in shared and share_quantizer(g, n.output[0]):
            continue
        # Sigmoid's range is [0, 1]: no calibration needed.
        lo, hi = (0.0, 1.0) if n.op_type == "Sigmoid" else seen[n.output[0]]
        insert_output_qdq(g, n, lo, hi, t, "chain")
    return len(todo)


def insert_output_qdq(
    g: Any, node: Any, lo: float, hi: float, dtype: np.dtype[Any], tag: str
) -> None:
    """Requantize ``node``'s first output: a Q/DQ pair for the range ``[lo, hi]`` (with 0).

    Consumers keep reading the output's name, now produced by the DequantizeLinear.
    """
    qmin, qmax = _INT_TYPES[np.dtype(dtype)]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / (qmax - qmin), 1e-8)
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    name = node.output[0]
    s_name = g.add_const(f"{tag}_scale", np.asarray(scale, np.float32))
    z_name = g.add_const(f"{tag}_zp", np.asarray(zp, dtype))
    raw, q_out = g.fresh(name + "_float"), g.fresh(name + "_q")
    node.output[0] = raw
    q = g.onnx.helper.make_node("QuantizeLinear", [raw, s_name, z_name], [q_out])
    dq = g.onnx.helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [name])
    at = list(g.graph.node).index(node) + 1
    g.graph.node.insert(at, dq)
    g.graph.node.insert(at, q)


def _same_quantizer(g: Any, a: Any, b: Any) -> bool:
    sa, za, sb, zb = (g.const(n.input[k]) for n in (a, b) for k in (1, 2))
    return (
        sa is not None
        and sb is not None
        and za is not None
        and zb is not None
        and za.dtype == zb.dtype
        and np.array_equal(sa, sb)
        and np.array_equal(za, zb)
    )


def _clamp_inside(g: Any, act: Any, q: Any) -> bool:
    """Whether Relu/Clip ``act`` changes nothing that QuantizeLinear ``q`` keeps.

    True when the values ``q`` can represent, ``[(qmin - z) s, (qmax - z) s]``, lie
    inside the activation's range: ``q`` then clamps at least as much.
    """
    s, z = g.const(q.input[1]), g.const(q.input[2])
    if s is None or z is None or z.dtype not in _INT_TYPES:
        return False
    qmin, qmax = _INT_TYPES[z.dtype]
    lo = (qmin - float(z.reshape(-1)[0])) * float(s.reshape(-1)[0])
    hi = (qmax - float(z.reshape(-1)[0])) * float(s.reshape(-1)[0])
    if act.op_type == "Relu":
        return lo >= 0.0
    if act.op_type != "Clip":
        return False
    bounds = [g.const(i) if i else None for i in list(act.input[1:3]) + [""] * 2][:2]
    a_lo = -np.inf if bounds[0] is None else float(bounds[0].reshape(-1)[0])
    a_hi = np.inf if bounds[1] is None else float(bounds[1].reshape(-1)[0])
    return a_lo <= lo and hi <= a_hi + 1e-6 * max(1.0, abs(a_hi))


def _drop_clamped(g: Any, q2: Any, outputs: set[str], cons: dict[str, Any], prod: Any) -> bool:
    """``Q1 -> DQ1 -> Relu/Clip -> Q2`` with Q1 == Q2 and a clamp Q2 makes: ``Q2`` alone."""
    act = prod.get(q2.input[0])
    if act is None or act.op_type not in ("Relu", "Clip") or act.output[0] in outputs:
        return False
    dq1 = prod.get(act.input[0])
    if dq1 is None or dq1.op_type != "DequantizeLinear" or dq1.output[0] in outputs:
        return False
    q1 = prod.get(dq1.input[0])
    if q1 is None or not _act_quantizer(g, q1) or q1.output[0] in outputs:
        return False
    if any(len(cons.get(n.output[0], [])) != 1 for n in (q1, dq1, act)):
        return False
    if not (_same_quantizer(g, q1, q2) and _clamp_inside(g, act, q2)):
        return False
    q2.input[0] = q1.input[0]
    for n in (act, dq1, q1):
        g.remove(n)
    return True


def drop_requantize(g: Any) -> int:
    """Quantize once where a tensor is quantized, dequantized and quantized again.

    A convolution with a simulated output quantizer (``IntQuant(outputs=...)``)
    whose output only feeds the next layer's input quantizer exports as
    ``Q1 -> DQ1 -> Q2``. ONNX Runtime then neither fuses the first convolution's
    output nor the second convolution into int8 kernels. Removing ``Q1 -> DQ1``
    (when ``DQ1`` is read by ``Q2`` alone) lets the convolution write ``Q2``'s
    codes directly: one rounding instead of two. The same holds through a Relu or
    Clip when ``Q1`` and ``Q2`` are the same quantizer and ``Q2``'s range lies inside
    the activation's (it then clamps as the activation would, and rounding twice with
    one scale is rounding once). Returns the number of pairs removed.
    """
    outputs, cons, prod = g.outputs(), g.consumers(), g.producers()
    removed = 0
    for q2 in list(g.graph.node):
        if not _act_quantizer(g, q2):
            continue
        if _drop_clamped(g, q2, outputs, cons, prod):
            removed += 1
            continue
        dq1 = prod.get(q2.input[0])
        if dq1 is None or dq1.op_type != "DequantizeLinear" or _act_type(g, dq1) is None:
            continue
        q1 = prod.get(dq1.input[0])
        if (
            q1 is None
            or not _act_quantizer(g, q1)
            or dq1.output[0] in outputs
            or q1.output[0] in outputs
            or len(cons.get(dq1.output[0], [])) != 1
            or len(cons.get(q1.output[0], [])) != 1
        ):
            continue
        q2.input[0] = q1.input[0]
        g.remove(dq1)
        g.remove(q1)
        removed += 1
    return removed


def drop_identity_relu(g: Any) -> int:
    """Remove each Relu reading a DequantizeLinear whose zero point is its lowest code.

    Such a DequantizeLinear's values are never negative, so the Relu changes nothing;
    its readers then read the DequantizeLinear itself, where ONNX Runtime's QDQ
    fusions look for their inputs (a residual ``Add`` after a ReLU becomes
    ``QLinearAdd``). Returns the number of Relu nodes removed.
    """
    outputs, prod, cons = g.outputs(), g.producers(), g.consumers()
    removed = 0
    for n in list(g.graph.node):
        if n.op_type != "Relu" or n.output[0] in outputs:
            continue
        dq = prod.get(n.input[0])
        z = _act_zero_point(g, dq) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if z is None or int(z.reshape(-1)[0]) != _INT_TYPES[np.dtype(z.dtype)][0]:
            continue
        for u in cons.get(n.output[0], []):
            u.input[:] = [dq.output[0] if i == n.output[0] else i for i in u.input]
        g.remove(n)
        removed += 1
    return removed
