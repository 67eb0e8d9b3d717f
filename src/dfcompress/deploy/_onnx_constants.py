"""Constant folding the QDQ rewrite needs before it can read weights as integer codes.

PyTorch's exporter leaves constants as ``Constant`` nodes, equal constants shared
through ``Identity``, a narrow (7-bit) weight range as ``Min``/``Max`` clipping
before its QuantizeLinear, and the weight's QuantizeLinear itself over a float
initializer. Each is computed once here, so that weights become int8 initializers.
"""

from __future__ import annotations

import numpy as np

from dfcompress.deploy._onnx_qdq import _INT_TYPES, _Graph

__all__ = ["fold_constant_minmax", "fold_weight_quantize", "materialize_constants"]


def materialize_constants(g: _Graph) -> None:
    """Constant nodes become initializers; Identity-of-initializer is bypassed."""
    changed = True
    while changed:
        changed = False
        inits = g.inits()
        outputs = g.outputs()
        for n in list(g.graph.node):
            if n.op_type == "Constant" and n.output[0] not in outputs:
                value = g.attr(n, "value", None)
                if value is None:
                    continue
                arr = np.asarray(g.nh.to_array(value))
                g.graph.initializer.append(g.nh.from_array(arr, n.output[0]))
            elif n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
                # PyTorch shares equal constants through Identity: read the source instead
                for user in g.graph.node:
                    for k, name in enumerate(user.input):
                        if name == n.output[0]:
                            user.input[k] = n.input[0]
            else:
                continue
            g.remove(n)
            changed = True


def fold_constant_minmax(g: _Graph) -> None:
    """Min/Max of constants (a narrow weight range clipped before quantizing) computed once."""
    ops = {"Min": np.minimum, "Max": np.maximum}
    changed = True
    while changed:
        changed = False
        for n in list(g.graph.node):
            if n.op_type not in ops or n.output[0] in g.outputs():
                continue
            values = [v for v in (g.const(i) for i in n.input) if v is not None]
            if len(values) != len(n.input):
                continue
            out = values[0]
            for v in values[1:]:
                out = ops[n.op_type](out, v)
            g.graph.initializer.append(g.nh.from_array(np.asarray(out), n.output[0]))
            g.remove(n)
            changed = True


def _broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


def fold_weight_quantize(g: _Graph) -> None:
    """QuantizeLinear over constant floats is computed once, as PyTorch rounds it."""
    for n in list(g.graph.node):
        if n.op_type != "QuantizeLinear":
            continue
        x = g.const(n.input[0])
        s = g.const(n.input[1])
        z = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
        if x is None or s is None or z is None or x.dtype != np.float32:
            continue
        lo, hi = _INT_TYPES.get(z.dtype, (None, None))
        if lo is None:
            continue
        axis = int(g.attr(n, "axis", 1))
        inv = (np.float32(1.0) / s.astype(np.float32)).astype(np.float32)
        q = np.rint(x * _broadcast(inv, x.ndim, axis)) + _broadcast(
            z.astype(np.float32), x.ndim, axis
        )
        q = np.clip(q, lo, hi).astype(z.dtype)
        g.graph.initializer.append(g.nh.from_array(q, n.output[0]))
        g.remove(n)
