"""ONNX rewrites that turn binary convolutions (BNext's) into exact int8 convolutions.

A binary convolution computes ``conv(sign(x), alpha * sign(w))``. Both operands take
two values, so it is an integer convolution with no rounding at all:

* the sign activation, exported by :func:`dfcompress.models._binary.int8_codes` as
  ``QuantizeLinear(Where(x >= -b, 1, -1), scale 1, zero point 1)``, becomes one
  ``Where`` that selects the uint8 codes 2 and 0 directly (no float sign tensor);
* a float weight whose output channels each hold one magnitude (``+-alpha_c``, BatchNorm
  folded in or not) becomes int8 codes {-1, +1} read through a per-channel
  DequantizeLinear with scale ``alpha_c``.

The result is the QDQ pattern ONNX Runtime fuses into QLinearConv (uint8 activations x
int8 weights; the products are +-2, so no 16-bit pair sum can saturate on AVX2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dfcompress.deploy._onnx_qdq import _INT_TYPES

__all__ = ["binary_weights", "sign_codes"]


def _single_user(g: Any, name: str) -> bool:
    return len(g.consumers().get(name, [])) == 1 and name not in g.outputs()


def _quantize(v: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """One value through QuantizeLinear (reciprocal scale in float32, ties to even)."""
    lo, hi = _INT_TYPES[zero.dtype]
    inv = np.float32(1.0) / np.float32(scale.reshape(()))
    r = np.rint(np.float32(v.reshape(())) * inv) + float(zero.reshape(()))
    return np.asarray(np.clip(r, lo, hi), dtype=zero.dtype)


def sign_codes(g: Any) -> int:
    """``QuantizeLinear(Where(c, a, b))`` with constant ``a``, ``b`` -> ``Where(c, q(a), q(b))``.

    Quantization is elementwise, so selecting the quantized constants is the same as
    quantizing the selection; ``a``/``b`` may pass through a float Cast first. Returns
    the number of rewrites.
    """
    prod = g.producers()
    done = 0
    for q in list(g.graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or not q.input[2]:
            continue
        src = prod.get(q.input[0])
        chain = []
        if src is not None and src.op_type == "Cast" and _single_user(g, src.output[0]):
            chain.append(src)
            src = prod.get(src.input[0])
        if src is None or src.op_type != "Where" or not _single_user(g, src.output[0]):
            continue
        a, b = g.const(src.input[1]), g.const(src.input[2])
        s, z = g.const(q.input[1]), g.const(q.input[2])
        if a is None or b is None or s is None or z is None or s.size != 1 or z.size != 1:
            continue
        if z.dtype not in _INT_TYPES or a.size != 1 or b.size != 1:
            continue
        where = g.onnx.helper.make_node(
            "Where",
            [
                src.input[0],
                g.add_const("code_true", _quantize(a, s, z)),
                g.add_const("code_false", _quantize(b, s, z)),
            ],
            [q.output[0]],
            name=g.fresh("sign_codes"),
        )
        g.graph.node.insert(list(g.graph.node).index(q), where)
        for n in [q, *chain, src]:
            g.remove(n)
        done += 1
    return done


def _binary_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 codes, per-output-channel scale) if every channel of ``w`` is ``+-alpha_c``."""
    if w.dtype != np.float32 or w.ndim < 2 or w.size == 0:
        return None
    flat = w.reshape(w.shape[0], -1)
    mag = np.abs(flat).max(axis=1)
    if not np.all((np.abs(flat) == mag[:, None]) | (mag[:, None] == 0)):
        return None
    codes = np.where(flat >= 0, 1, -1).astype(np.int8)
    codes[mag == 0] = 0
    scale = np.where(mag > 0, mag, np.float32(1.0)).astype(np.float32)
    return codes.reshape(w.shape), scale


def binary_weights(g: Any, act_dq: Any) -> int:
    """Float Conv weights of one magnitude per channel, behind a quantized input, -> int8.

    ``act_dq(name, producers)`` returns the per-tensor DequantizeLinear feeding a
    Conv's input (or None); only such convs are rewritten, as only they can run as
    int8 kernels. Returns the number of rewrites.
    """
    prod = g.producers()
    done = 0
    for conv in list(g.graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or act_dq(g, conv.input[0], prod) is None:
            continue
        w = g.const(conv.input[1])
        found = None if w is None else _binary_codes(w)
        if found is None:
            continue
        codes, scale = found
        g.feed_dequantized(conv, 1, "binary_w", codes, scale)
        done += 1
    return done
