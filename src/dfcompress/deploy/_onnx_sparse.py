"""Store pruned weights sparse in an ONNX file: a bit mask, the other values, a decoder.

Every ONNX runtime stores a weight densely, so a 50 %-pruned model writes as many bytes
as the float one. Here each weight initializer of at least :data:`MIN_ELEMENTS` elements
whose most common value (0.0 in a pruned float weight, the zero point in int8/uint8
codes) fills enough of it to save 10 % of its bytes (:data:`MAX_RATIO`) is replaced by

* ``mask``: one bit per element, packed 8 to a uint8 byte (element ``8i + j`` is bit
  ``j`` of byte ``i``), set where the element differs from the common value;
* ``values``: the common value, then the other elements in order (bit patterns kept,
  NaN payloads included; ``-0.0`` is stored as ``0.0``, see :func:`_patterns`);

and a few standard operators that rebuild the dense tensor under its old name::

    bits = Cast(BitShift(mask[m, 1], [0..7]), int32) % 2       # [m, 8]
    bits = Slice(Reshape(bits, [-1]), 0, n)                     # [n], 0 or 1
    dense = Reshape(Gather(values, bits * CumSum(bits)), shape)

``bits * CumSum(bits)`` is the rank of each kept element among the kept ones (1, 2,
...) and 0 elsewhere, so ``Gather`` picks either its value or the common value. Every
input is constant, so ONNX Runtime's constant folding runs the decoder once when it
builds the session: the kernels, speed and memory are those of the dense file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_RATIO", "MIN_ELEMENTS", "MIN_OPSET", "encode", "encode_initializer", "write_sparse"]

MIN_OPSET = 11
"""The first opset with BitShift and CumSum."""
MIN_ELEMENTS = 1024
"""Smaller weights are left dense: the decoder's nodes would eat the saving."""
MAX_RATIO = 0.9
"""The most an encoded weight may take, as a fraction of its dense bytes: so at least
13 % zeros for float32, 17 % for float16 and 23 % for int8 codes."""
_NODE_BYTES = 500  # about what one decoder's nodes and small constants take in the file
_DTYPES: tuple[np.dtype[Any], ...] = (np.dtype(np.float32), np.dtype(np.float16))
_CODE_DTYPES: tuple[np.dtype[Any], ...] = (np.dtype(np.int8), np.dtype(np.uint8))
_MATMULS = ("Gemm", "MatMul")
_CONVS = ("Conv", "ConvTranspose")


def _patterns(w: np.ndarray) -> np.ndarray:
    """The elements of ``w`` as unsigned integers of their width; -0.0 is read as 0.0.

    A BatchNorm folded with a negative scale turns a pruned channel's zeros into -0.0;
    stored as 0.0 they cost nothing, and every product with them is the same number.
    Other bit patterns (NaN payloads included) are kept.
    """
    flat = np.ascontiguousarray(w).reshape(-1)
    if flat.dtype.kind == "f":
        flat = np.where(flat == 0, np.zeros((), flat.dtype), flat)
    return flat.view(f"u{flat.dtype.itemsize}")


def encode(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, values)`` of ``w``: packed ``[ceil(n / 8), 1]`` uint8 bits, common value first.

    >>> mask, values = encode(np.array([0.0, 2.0, 0.0, 0.0, 3.0], np.float32))
    >>> mask.ravel().tolist(), values.tolist()
    ([18], [0.0, 2.0, 3.0])
    """
    if w.size == 0:
        return np.zeros((0, 1), np.uint8), np.zeros(1, w.dtype)
    bits = _patterns(w)
    codes, counts = np.unique(bits, return_counts=True)
    common = codes[int(np.argmax(counts))]
    keep = bits != common
    mask = np.packbits(keep, bitorder="little").reshape(-1, 1)
    values = np.concatenate([np.asarray([common], bits.dtype), bits[keep]]).view(w.dtype)
    return mask, values


def worth_encoding(w: np.ndarray) -> bool:
    """Whether ``w`` is big and sparse enough for the encoding to save 10 % of its bytes."""
    if w.size < MIN_ELEMENTS or w.size >= 2**31:  # int32 ranks
        return False
    kept = w.size - int(np.unique(_patterns(w), return_counts=True)[1].max())
    encoded = math.ceil(w.size / 8) + (kept + 1) * w.dtype.itemsize + _NODE_BYTES
    return encoded <= MAX_RATIO * w.nbytes


class _Names:
    """Fresh tensor names, and the constants every decoder of one graph shares."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.taken = {t.name for t in graph.initializer}
        self.taken |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        self.taken |= {o for n in graph.node for o in (*n.input, *n.output)}
        self.shared: dict[str, str] = {}
        self.decoders = 0

    def fresh(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def shared_const(self, key: str, value: np.ndarray) -> str:
        if key not in self.shared:
            self.shared[key] = self.const(f"sparse_decode_{key}", value)
        return self.shared[key]


def _decoder(names: _Names, name: str, w: np.ndarray) -> list[Any]:
    """Nodes writing ``name`` (shape and dtype of ``w``) from its mask and values.

    The nodes are unnamed and their tensors have short names: a decoder is a few
    hundred bytes of the file.
    """
    from onnx import TensorProto, helper

    mask, values = encode(w)
    n = w.size
    names.decoders += 1
    tag = names.fresh(f"sparse{names.decoders}")
    m, v = names.const(f"{tag}/mask", mask), names.const(f"{tag}/values", values)
    shifts = names.shared_const("shifts", np.arange(8, dtype=np.uint8))
    two = names.shared_const("two", np.array(2, np.int32))
    flat = names.shared_const("flat", np.array([-1], np.int64))
    zero = names.shared_const("zero", np.array(0, np.int32))
    t = [names.fresh(f"{tag}/t{k}") for k in range(8)]
    nodes = [
        helper.make_node("BitShift", [m, shifts], [t[0]], direction="RIGHT"),
        helper.make_node("Cast", [t[0]], [t[1]], to=TensorProto.INT32),
        helper.make_node("Mod", [t[1], two], [t[2]]),
        helper.make_node("Reshape", [t[2], flat], [t[3]]),
    ]
    bits = t[3]
    if mask.size * 8 != n:
        start = names.shared_const("start", np.array([0], np.int64))
        end = names.const(f"{tag}/size", np.array([n], np.int64))
        nodes.append(helper.make_node("Slice", [bits, start, end, start], [t[4]]))
        bits = t[4]
    shape = names.const(f"{tag}/shape", np.array(w.shape, np.int64))
    nodes += [
        helper.make_node("CumSum", [bits, zero], [t[5]]),
        helper.make_node("Mul", [bits, t[5]], [t[6]]),
        helper.make_node("Gather", [v, t[6]], [t[7]], axis=0),
        helper.make_node("Reshape", [t[7], shape], [name]),
    ]
    return nodes


def encode_initializer(
    model: Any, name: str, *, always: bool = False, names: _Names | None = None
) -> bool:
    """Replace initializer ``name`` of ``model`` (in place) by its encoding and decoder.

    Only when :func:`worth_encoding` (or ``always``); returns whether it was replaced.
    ``names``: the graph's names, shared by the decoders of one rewrite.
    """
    from onnx import numpy_helper

    graph = model.graph
    found = [t for t in graph.initializer if t.name == name]
    if len(found) != 1:
        return False
    w = np.asarray(numpy_helper.to_array(found[0]))
    if w.dtype not in (*_DTYPES, *_CODE_DTYPES) or not (always or worth_encoding(w)):
        return False
    nodes = _decoder(_Names(graph) if names is None else names, name, w)
    graph.initializer.remove(found[0])
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)  # constants only: they can run first
    return True


def _weights(model: Any, codes: bool) -> list[str]:
    """Initializers read as Conv/Gemm/MatMul weights (int8 codes through DequantizeLinear)."""
    from onnx import helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    fixed = {v.name for v in (*graph.input, *graph.output)}
    producer = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    for node in graph.node:
        slots = (1,) if node.op_type in _CONVS else (0, 1) if node.op_type in _MATMULS else ()
        for k in slots:
            if k >= len(node.input):
                continue
            name, dtypes = node.input[k], _DTYPES
            src = producer.get(name)
            if codes and src is not None and src.op_type == "DequantizeLinear":
                name, dtypes = src.input[0], _CODE_DTYPES
            t = inits.get(name)
            if t is None or name in fixed or name in found:
                continue
            if helper.tensor_dtype_to_np_dtype(t.data_type) in dtypes:
                found.append(name)
    return found


def sparse_weights(model: Any, *, codes: bool) -> int:
    """Encode the weights of ``model`` (in place) that are worth it; how many were.

    ``codes``: also the int8/uint8 codes read through DequantizeLinear.
    """
    names = _Names(model.graph)
    return sum(encode_initializer(model, n, names=names) for n in _weights(model, codes))


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def write_sparse(model: Any, path: Path, *, quantized: bool) -> tuple[int, int]:
    """Write ``model`` to ``path`` with its sparse weights encoded: (tensors, bytes saved).

    ``model`` is not modified. Int8 codes (``quantized``) are encoded only when ONNX
    Runtime then runs the same integer kernels as on the dense file; otherwise only
    the float weights are. Files below opset :data:`MIN_OPSET` are written dense.
    """
    import importlib.util

    import onnx

    dense = model.SerializeToString()
    if _opset(model) < MIN_OPSET:
        path.write_bytes(dense)
        return 0, 0
    # Without ONNX Runtime to count its integer kernels, int8 codes stay dense.
    quantized = quantized and importlib.util.find_spec("onnxruntime") is not None
    tries = [True, False] if quantized else [False]
    want: dict[str, int] | None = None
    for codes in tries:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        count = sparse_weights(work, codes=codes)
        if count == 0:
            continue
        blob = work.SerializeToString()
        if quantized:
            from dfcompress.deploy._onnx_runtime import int8_kernels

            if want is None:
                path.write_bytes(dense)
                want = int8_kernels(path)
            path.write_bytes(blob)
            if int8_kernels(path) != want:
                continue
        path.write_bytes(blob)
        return count, len(dense) - len(blob)
    path.write_bytes(dense)
    return 0, 0
