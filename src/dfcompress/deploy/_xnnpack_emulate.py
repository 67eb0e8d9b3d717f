"""The int8 arithmetic of XNNPACK's kernels, for the eager model of the xnnpack target.

The converted PT2E graph writes each int8 op as dequantize -> float op -> quantize.
XNNPACK computes the same op on the integer codes and requantizes in its own way, so
a value that falls near a rounding boundary can get the neighbouring code in the
file. One code is nothing in a float network, but a binary network's next sign()
turns it into a flipped activation, and the flip grows (the trained NPR + BNext
detector: 0.9 % of its decisions differed between graph and file). The eager model
therefore runs a copy of the graph in which each quantized convolution, linear
layer, addition and multiplication computes what XNNPACK's kernels compute; the
graph that is exported keeps the dequantize/op/quantize form the partitioner
recognises. Verified code for code against the ``.pte`` files:

- convolution and linear (``qs8-qc8w`` GEMM/IGEMM/DWCONV, "fp32" requantization):
  the sum of ``(x - x_zero_point) * w`` over the int8 codes in int32, plus the bias
  codes, converted to float32 and multiplied by the float32 scale
  ``input_scale * weight_scale[c] / output_scale`` (computed in float32, left to
  right), rounded to the nearest integer (ties to even), plus the output zero point,
  clamped to the output range (a fused ReLU raises its low end to the zero point);
- addition (``qs8-vadd``): each input's code minus its zero point, times an integer
  multiplier ``lrint(a_scale / output_scale * 2**shift)`` (21 bits for the larger
  one), summed with ``2**(shift - 1)`` and shifted right by ``shift`` (rounding
  half-way values up), plus the output zero point, clamped;
- multiplication (``qs8-vmul``, "fp32"): the product of the two codes minus their
  zero points, times the float32 scale ``a_scale * b_scale / output_scale``, rounded
  half to even, plus the output zero point, clamped;
- any other quantize (a float op's output converted to int8, ``f32-qs8-vcvt``): the
  value times the float32 reciprocal ``1 / scale`` computed in float32 (the graph's
  quantize multiplies by ``1 / scale`` computed in float64, which can be one unit in
  the last place away), rounded half to even, plus the zero point, clamped.
"""

from __future__ import annotations

import copy
import struct
from typing import Any

import torch
from torch import fx, nn

from dfcompress.deploy._pt2e_bias import _attr
from dfcompress.deploy._xnnpack_rewrites import _DQ, _DQC, _QT

__all__ = ["emulated_graph"]

_aten = torch.ops.aten
_CONV = (_aten.conv1d.default, _aten.conv2d.default)
_LINEAR = _aten.linear.default
_RELU = (_aten.relu.default, _aten.relu_.default)


def f32(x: float) -> float:
    """``x`` rounded to float32 (as C stores a ``float``).

    >>> f32(0.1)
    0.10000000149011612
    """
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _exponent(x: float) -> int:
    """The unbiased binary exponent of the float32 ``x`` (``> 0``)."""
    return int((struct.unpack("<I", struct.pack("<f", x))[0] >> 23) - 127)


def requantize(
    acc: torch.Tensor, scale: torch.Tensor, zero_point: int, lo: int, hi: int
) -> torch.Tensor:
    """int32 accumulators to int8 codes, "fp32" requantization: ``round(f32(acc) * scale)``."""
    y = torch.round(acc.to(torch.float32) * scale.to(torch.float32))
    return torch.clamp(y + zero_point, lo, hi).to(torch.int8)


def layer_codes(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scales: torch.Tensor | float,
    bias: torch.Tensor | None,
    out_scale: float,
    out_zero_point: int,
    lo: int,
    hi: int,
    conv: tuple[Any, ...] | None,
) -> torch.Tensor:
    """The int8 output codes of an XNNPACK int8 convolution (``conv`` = its stride,
    padding, dilation, groups) or linear layer (``conv`` None) on the input codes ``x``."""
    xd = x.to(torch.float64) - x_zero_point
    w = weight.to(torch.float64)
    if conv is None:
        acc = nn.functional.linear(xd, w)
        shape: tuple[int, ...] = (-1,)
    else:
        fn = nn.functional.conv2d if w.dim() == 4 else nn.functional.conv1d
        acc = fn(xd, w, None, *conv)
        shape = (-1,) + (1,) * (w.dim() - 2)
    s_w = torch.as_tensor(weight_scales, dtype=torch.float32).reshape(-1)
    s_x = torch.tensor(f32(x_scale), dtype=torch.float32)
    # float32 arithmetic, left to right, as the kernel's parameters are computed
    scale = (s_x * s_w) / torch.tensor(f32(out_scale), dtype=torch.float32)
    if bias is not None:
        step = (s_w * s_x).to(torch.float64)
        acc = acc + torch.round(bias.to(torch.float64) / step).reshape(shape)
    return requantize(acc, scale.reshape(shape), out_zero_point, lo, hi)


def add_codes(
    a: torch.Tensor,
    a_scale: float,
    a_zero_point: int,
    b: torch.Tensor,
    b_scale: float,
    b_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    lo: int,
    hi: int,
) -> torch.Tensor:
    """The int8 codes of XNNPACK's int8 addition of the codes ``a`` and ``b``."""
    a_out = f32(f32(a_scale) / f32(out_scale))
    b_out = f32(f32(b_scale) / f32(out_scale))
    shift = 20 - _exponent(max(a_out, b_out))
    a_mult, b_mult = round(a_out * 2.0**shift), round(b_out * 2.0**shift)
    acc = (a.to(torch.int64) - a_zero_point) * a_mult + (b.to(torch.int64) - b_zero_point) * b_mult
    y = torch.bitwise_right_shift(acc + (1 << (shift - 1)), shift)
    return torch.clamp(y + out_zero_point, lo, hi).to(torch.int8)


def mul_codes(
    a: torch.Tensor,
    a_scale: float,
    a_zero_point: int,
    b: torch.Tensor,
    b_scale: float,
    b_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    lo: int,
    hi: int,
) -> torch.Tensor:
    """The int8 codes of XNNPACK's int8 multiplication of the codes ``a`` and ``b``."""
    scale = f32(f32(f32(a_scale) * f32(b_scale)) / f32(out_scale))
    acc = (a.to(torch.int32) - a_zero_point) * (b.to(torch.int32) - b_zero_point)
    return requantize(acc, torch.tensor(scale), out_zero_point, lo, hi)


def convert_codes(
    x: torch.Tensor, scale: float, zero_point: int, lo: int, hi: int, dtype: torch.dtype
) -> torch.Tensor:
    """The int8 codes of XNNPACK's float-to-int8 conversion of ``x``."""
    one = torch.tensor(1.0, dtype=torch.float32)
    inv = one / torch.tensor(f32(scale), dtype=torch.float32)  # a float32 division
    y = torch.round(x.to(torch.float32) * inv)
    return torch.clamp(y + zero_point, lo, hi).to(dtype)


def _value(gm: fx.GraphModule, node: object) -> Any:
    """What a ``get_attr`` node reads; any other argument as it is."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return _attr(gm, str(node.target))
    return node


def _int8_input(node: object) -> fx.Node | None:
    """The int8 codes a per-tensor dequantize node reads, else None."""
    if isinstance(node, fx.Node) and node.target is _DQ and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def _qparams(node: object) -> tuple[float, int, int, int] | None:
    """``(scale, zero point, low, high)`` of a per-tensor quantize or dequantize node."""
    if not isinstance(node, fx.Node) or node.target not in (_QT, _DQ) or len(node.args) < 5:
        return None
    scale, zero_point, lo, hi = node.args[1:5]
    if not isinstance(scale, float):
        return None
    if not (isinstance(zero_point, int) and isinstance(lo, int) and isinstance(hi, int)):
        return None
    return scale, zero_point, lo, hi


def _rewrite_layer(gm: fx.GraphModule, q: fx.Node, op: fx.Node, lo: int) -> bool:
    dq_x, dq_w = op.args[0], op.args[1]
    x = _int8_input(dq_x)
    if x is None or not isinstance(dq_w, fx.Node) or dq_w.target not in (_DQC, _DQ):
        return False
    weight = _value(gm, dq_w.args[0])
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.int8:
        return False
    if dq_w.target is _DQC and dq_w.args[3] != 0:  # per output channel only
        return False
    if any(int(z) != 0 for z in torch.as_tensor(_value(gm, dq_w.args[2])).reshape(-1).tolist()):
        return False
    bias = op.args[2] if len(op.args) > 2 else None
    bias_t = _value(gm, bias)
    if bias is not None and not isinstance(bias_t, torch.Tensor):
        return False
    conv: tuple[Any, ...] | None = None
    if op.target in _CONV:
        dims = weight.dim() - 2
        defaults: list[Any] = [[1] * dims, [0] * dims, [1] * dims, 1]
        rest = list(op.args[3:]) + defaults[len(op.args) - 3 :]
        if isinstance(rest[1], str):  # padding="same"/"valid": leave the float op
            return False
        conv = tuple(rest)
    px, py = _qparams(dq_x), _qparams(q)
    if px is None or py is None:
        return False
    b_node = bias if isinstance(bias, fx.Node) else None
    args = (x, px[0], px[1], dq_w.args[0], dq_w.args[1], b_node, py[0], py[1], lo, py[3])
    with gm.graph.inserting_before(q):
        new = gm.graph.call_function(layer_codes, (*args, conv))
    q.replace_all_uses_with(new)
    return True


def _rewrite_binary(gm: fx.GraphModule, q: fx.Node, op: fx.Node, lo: int) -> bool:
    a, b = (_int8_input(arg) for arg in op.args[:2])
    if a is None or b is None or len(op.args) > 2 or op.kwargs:
        return False
    pa, pb, py = _qparams(op.args[0]), _qparams(op.args[1]), _qparams(q)
    if pa is None or pb is None or py is None:
        return False
    fn = add_codes if op.target is _aten.add.Tensor else mul_codes
    args = (a, pa[0], pa[1], b, pb[0], pb[1], py[0], py[1], lo, py[3])
    with gm.graph.inserting_before(q):
        new = gm.graph.call_function(fn, args)
    q.replace_all_uses_with(new)
    return True


def emulated_graph(graph: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``graph`` (sharing its tensors) whose int8 layers, additions,
    multiplications and float-to-int8 conversions compute XNNPACK's arithmetic; and
    how many ops were rewritten."""
    gm = fx.GraphModule(graph, copy.deepcopy(graph.graph))
    done = 0
    for q in list(gm.graph.find_nodes(op="call_function", target=_QT)):
        op, params = q.args[0], _qparams(q)
        if not isinstance(op, fx.Node) or params is None:
            continue
        lo = params[2]
        if op.target in _RELU and len(op.users) == 1 and isinstance(op.args[0], fx.Node):
            op, lo = op.args[0], max(lo, params[1])  # a ReLU raises the low end
        if len(op.users) != 1 or op.op != "call_function":
            continue
        if op.target in (*_CONV, _LINEAR):
            done += _rewrite_layer(gm, q, op, lo)
        elif op.target in (_aten.add.Tensor, _aten.mul.Tensor):
            done += _rewrite_binary(gm, q, op, lo)
    for q in list(gm.graph.find_nodes(op="call_function", target=_QT)):
        if q.users and not q.kwargs and len(q.args) == 6:
            q.target = convert_codes
            done += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, done
