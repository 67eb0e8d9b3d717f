"""Rewrite an exported fake-quantized ONNX graph into the QDQ form ONNX Runtime fuses.

PyTorch's TorchScript exporter turns ``fake_quantize_per_tensor_affine`` (inputs) and
``fake_quantize_per_channel_affine`` (weights) into QuantizeLinear/DequantizeLinear
pairs. That graph is valid but ONNX Runtime runs it in float: its QDQ fusion
(Conv -> QLinearConv, Gemm -> QGemm, MatMul -> MatMulIntegerToFloat) wants

* the weight as an int8 initializer read through DequantizeLinear (not a float
  initializer passed through QuantizeLinear at run time);
* the bias, when present, as an int32 initializer with scale ``s_x * s_w`` and zero
  point 0, read through DequantizeLinear;
* for Conv, a QuantizeLinear after the output, of the same integer type as the input;
* no BatchNormalization between the Conv and that QuantizeLinear.

:func:`to_qdq` makes the graph look like that. BatchNorm after a quantized Conv is
folded into the per-channel weight scales (the int8 weights are unchanged, so the
arithmetic is the same as the eager model's). Where a Conv output does not already
flow into a QuantizeLinear (the next layer's input quantizer), a Q/DQ pair is
inserted whose range comes from ``ranges`` (observed min/max on calibration data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Ranges", "has_qdq", "prepare_qdq", "to_qdq"]

Ranges = Callable[[Sequence[str]], dict[str, tuple[float, float]]]
"""Given tensor names of the graph, return the observed (min, max) of each."""

_INT_TYPES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


class _Graph:
    """Small mutable view over an ``onnx.ModelProto`` graph."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.nh = numpy_helper
        self.model = model
        self.graph = model.graph
        self._uid = 0

    def inits(self) -> dict[str, Any]:
        return {t.name: t for t in self.graph.initializer}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits().get(name)
        return None if t is None else np.asarray(self.nh.to_array(t))

    def add_const(self, hint: str, value: np.ndarray) -> str:
        self._uid += 1
        name = f"{hint}__dfc{self._uid}"
        self.graph.initializer.append(self.nh.from_array(np.array(value, order="C"), name))
        return name

    def fresh(self, hint: str) -> str:
        self._uid += 1
        return f"{hint}__dfc{self._uid}"

    def feed_dequantized(
        self, node: Any, index: int, tag: str, codes: np.ndarray, scale: np.ndarray
    ) -> None:
        """Make input ``index`` of ``node`` a per-axis-0 DequantizeLinear of constants.

        ``codes`` and ``scale`` become initializers (zero points 0, of the codes'
        dtype); the DequantizeLinear is inserted just before ``node``.
        """
        out = self.fresh(f"{tag}_dq")
        dq = self.onnx.helper.make_node(
            "DequantizeLinear",
            [
                self.add_const(f"{tag}_q", codes),
                self.add_const(f"{tag}_scale", scale),
                self.add_const(f"{tag}_zp", np.zeros(scale.shape, codes.dtype)),
            ],
            [out],
            axis=0,
            name=self.fresh(f"{tag}_dq_node"),
        )
        self.graph.node.insert(list(self.graph.node).index(node), dq)
        node.input[index] = out

    def producers(self) -> dict[str, Any]:
        return {o: n for n in self.graph.node for o in n.output}

    def consumers(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for n in self.graph.node:
            for i in n.input:
                out.setdefault(i, []).append(n)
        return out

    def outputs(self) -> set[str]:
        return {o.name for o in self.graph.output}

    def remove(self, node: Any) -> None:
        self.graph.node.remove(node)

    def attr(self, node: Any, name: str, default: Any) -> Any:
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default


def _weight_dq(g: _Graph, name: str, prod: dict[str, Any]) -> Any | None:
    """The DequantizeLinear producing ``name`` from an int8/uint8 initializer, if any."""
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    w = g.const(dq.input[0])
    return dq if w is not None and w.dtype in _INT_TYPES else None


def _act_dq(g: _Graph, name: str, prod: dict[str, Any]) -> Any | None:
    """The DequantizeLinear producing activation ``name`` (per-tensor), if any."""
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is not None:
        return None
    s = g.const(dq.input[1])
    return dq if s is not None and s.size == 1 else None


def _dq_params(g: _Graph, dq: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = g.const(dq.input[0])
    s = g.const(dq.input[1])
    z = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if w is None or s is None:  # pragma: no cover - callers checked with _weight_dq
        raise ValueError(f"{dq.name} does not read a constant weight")
    return w, s.astype(np.float32), np.zeros_like(s, dtype=w.dtype) if z is None else z


def _fold_batchnorm(g: _Graph) -> None:
    """Conv(DQ(int8 W)) -> BatchNormalization becomes one Conv with rescaled channels."""
    prod, cons, outputs = g.producers(), g.consumers(), g.outputs()
    for conv in list(g.graph.node):
        if conv.op_type != "Conv" or conv.output[0] in outputs:
            continue
        users = cons.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization":
            continue
        bn = users[0]
        dq = _weight_dq(g, conv.input[1], prod)
        params = [g.const(i) for i in bn.input[1:5]]
        if dq is None or len(cons.get(dq.output[0], [])) != 1 or any(p is None for p in params):
            continue
        w, s, z = _dq_params(g, dq)
        if np.any(z != 0) or w.dtype != np.int8:
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
        f = gamma / np.sqrt(var + float(g.attr(bn, "epsilon", 1e-5)))
        c_out = w.shape[0]
        s_vec = np.broadcast_to(s.reshape(-1) if s.size > 1 else s.reshape(()), (c_out,))
        sign = np.where(f < 0, -1, 1).reshape((-1,) + (1,) * (w.ndim - 1))
        w_new = np.clip(w.astype(np.int32) * sign, -128, 127).astype(np.int8)
        s_new = (s_vec * np.abs(f)).astype(np.float32)
        s_new = np.where(s_new > 0, s_new, np.float32(np.finfo(np.float32).tiny))
        has_bias = len(conv.input) > 2 and conv.input[2]
        b = g.const(conv.input[2]) if has_bias else np.zeros(c_out, np.float32)
        if b is None:
            continue
        b_new = ((b.astype(np.float64) - mean) * f + beta).astype(np.float32)
        dq.input[0] = g.add_const("w_bnfold", w_new)
        dq.input[1] = g.add_const("w_scale_bnfold", s_new)
        zp = g.add_const("w_zp_bnfold", np.zeros(c_out, np.int8))
        if len(dq.input) > 2:
            dq.input[2] = zp
        else:
            dq.input.append(zp)
        _set_axis(g, dq, 0)
        if has_bias:
            conv.input[2] = g.add_const("b_bnfold", b_new)
        else:
            conv.input.append(g.add_const("b_bnfold", b_new))
        conv.output[0] = bn.output[0]
        g.remove(bn)


def _set_axis(g: _Graph, node: Any, axis: int) -> None:
    for a in list(node.attribute):
        if a.name == "axis":
            node.attribute.remove(a)
    node.attribute.append(g.onnx.helper.make_attribute("axis", axis))


def _quantized_ops(g: _Graph) -> list[tuple[Any, Any, Any]]:
    """(op, activation DQ, weight DQ) for every Conv/Gemm/MatMul fed by both."""
    prod = g.producers()
    found = []
    for n in g.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        a, w = _act_dq(g, n.input[0], prod), _weight_dq(g, n.input[1], prod)
        if a is not None and w is not None:
            found.append((n, a, w))
    return found


def _quantize_bias(g: _Graph, *, unfused_convs: bool = True) -> None:
    """A float bias becomes int32 with scale s_x * s_w, as the QDQ kernels require.

    ``unfused_convs=False`` keeps the float bias of convs whose output no QuantizeLinear
    reads: they run in float, where rounding the bias would only add error (a binary
    network's signs flip on a bias rounded by half a step).
    """
    cons, outputs = g.consumers(), g.outputs()
    for op, a, wdq in _quantized_ops(g):
        if op.op_type == "MatMul" or len(op.input) < 3 or not op.input[2]:
            continue
        if (
            not unfused_convs
            and op.op_type == "Conv"
            and _needs_output_q(g, cons, outputs, op.output[0])
        ):
            continue
        b = g.const(op.input[2])
        if b is None or b.dtype != np.float32 or b.ndim != 1:
            continue
        s_x = float(np.asarray(g.const(a.input[1])).reshape(()))
        _, s_w, _ = _dq_params(g, wdq)
        s_b = (s_x * np.broadcast_to(s_w.reshape(-1), b.shape)).astype(np.float32)
        s_b = np.where(s_b > 0, s_b, np.float32(1e-12)).astype(np.float32)
        bq = np.clip(np.rint(b.astype(np.float64) / s_b), -(2**31), 2**31 - 1).astype(np.int32)
        g.feed_dequantized(op, 2, "bias", bq, s_b)


def _all_quantize(g: _Graph, users: list[Any], *, at_qmin: bool) -> bool:
    """Every user is a QuantizeLinear (with zero point at the low end, if asked)."""
    if not users or any(u.op_type != "QuantizeLinear" for u in users):
        return False
    if not at_qmin:
        return True
    for u in users:
        z = g.const(u.input[2]) if len(u.input) > 2 and u.input[2] else np.zeros((), np.uint8)
        if (
            z is None
            or z.dtype not in _INT_TYPES
            or int(z.reshape(-1)[0]) != _INT_TYPES[z.dtype][0]
        ):
            return False
    return True


def _needs_output_q(g: _Graph, cons: dict[str, list[Any]], outputs: set[str], name: str) -> bool:
    """Whether ONNX Runtime would find no QuantizeLinear right after this Conv output.

    A Relu between the Conv and the next QuantizeLinear is dropped by ONNX Runtime only
    when that QuantizeLinear's zero point is the type's minimum (it then clips at 0).
    """
    if name in outputs:
        return True
    users = cons.get(name, [])
    if len(users) == 1 and users[0].op_type == "Relu" and users[0].output[0] not in outputs:
        return not _all_quantize(g, cons.get(users[0].output[0], []), at_qmin=True)
    return not _all_quantize(g, users, at_qmin=False)


def _drop_unused_initializers(g: _Graph) -> None:
    used = {i for n in g.graph.node for i in n.input} | g.outputs()
    for t in list(g.graph.initializer):
        if t.name not in used:
            g.graph.initializer.remove(t)


def _insert_output_qdq(g: _Graph, ranges: Ranges) -> None:
    cons, outputs = g.consumers(), g.outputs()
    todo = [
        (op, a)
        for op, a, _ in _quantized_ops(g)
        if op.op_type == "Conv" and _needs_output_q(g, cons, outputs, op.output[0])
    ]
    if not todo:
        return
    from dfcompress.deploy._onnx_chain import insert_output_qdq, share_quantizer

    todo = [(op, a) for op, a in todo if not share_quantizer(g, op.output[0])]
    if not todo:
        return
    seen = ranges([op.output[0] for op, _ in todo])
    for op, a in todo:
        name = op.output[0]
        zt = g.const(a.input[2]) if len(a.input) > 2 and a.input[2] else None
        zt = np.zeros((), np.uint8) if zt is None else zt
        dtype = zt.dtype if zt.dtype in _INT_TYPES else np.dtype(np.uint8)
        lo, hi = seen[name]
        insert_output_qdq(g, op, lo, hi, dtype, "out")


def _weights_to_uint8(g: _Graph) -> None:
    """Shift int8 weights of the quantized ops to uint8 with zero point 128.

    The values are the same (``q + 128`` with ``z + 128``), but ONNX Runtime then
    runs its U8U8 kernels, which accumulate in 32 bits. Its U8S8 kernels on x86
    CPUs without VNNI add pairs of products in 16 bits and saturate when large
    activations meet large weights, which can cost far more than quantization.
    """
    for _, _, wdq in _quantized_ops(g):
        w, _, z = _dq_params(g, wdq)
        if w.dtype != np.int8:
            continue
        wdq.input[0] = g.add_const("w_u8", (w.astype(np.int16) + 128).astype(np.uint8))
        z_u8 = (z.astype(np.int16) + 128).astype(np.uint8)
        if len(wdq.input) > 2:
            wdq.input[2] = g.add_const("w_zp_u8", z_u8)
        else:
            wdq.input.append(g.add_const("w_zp_u8", z_u8))


def has_qdq(model: Any) -> bool:
    """Whether the graph contains QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def prepare_qdq(model: Any, *, output_q: bool = True) -> Any:
    """Steps that need no calibration: constants, weight Q folding, binary codes, BatchNorm, bias.

    ``output_q=False``: convs that will run in float keep their float bias.
    """
    from dfcompress.deploy._onnx_binary import binary_weights, sign_codes
    from dfcompress.deploy._onnx_constants import (
        fold_constant_minmax,
        fold_weight_quantize,
        materialize_constants,
    )

    g = _Graph(model)
    materialize_constants(g)
    fold_constant_minmax(g)
    fold_weight_quantize(g)
    sign_codes(g)
    binary_weights(g, _act_dq)
    _fold_batchnorm(g)
    _quantize_bias(g, unfused_convs=output_q)
    return model


def to_qdq(
    model: Any,
    ranges: Ranges,
    *,
    weights: str = "uint8",
    output_q: bool = True,
    chain: bool = False,
) -> Any:
    """Rewrite ``model`` (an ``onnx.ModelProto``, modified in place) into fusable QDQ form.

    ``weights="uint8"`` stores the int8 weight codes shifted by 128 (exact
    arithmetic everywhere); ``"int8"`` keeps them signed (faster U8S8 kernels,
    which may saturate on CPUs without VNNI). ``output_q=False`` inserts no Q/DQ
    after Conv outputs (exact, but those convs then run in float). ``chain=True``
    also quantizes the outputs of the operators between convs (see
    :mod:`dfcompress.deploy._onnx_chain`), so int8 tensors stay int8 there.
    """
    prepare_qdq(model, output_q=output_q)
    g = _Graph(model)
    from dfcompress.deploy._onnx_chain import drop_identity_relu, drop_requantize

    drop_identity_relu(g)
    drop_requantize(g)
    if output_q:
        _insert_output_qdq(g, ranges)
    if chain:
        from dfcompress.deploy._onnx_chain import chain_qdq

        chain_qdq(g, ranges)
    if weights == "uint8":
        _weights_to_uint8(g)
    _drop_unused_initializers(g)
    return model
