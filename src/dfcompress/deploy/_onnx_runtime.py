"""ONNX Runtime plumbing for export: sessions, activation ranges, int8 kernel counts."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfcompress.errors import require

__all__ = ["INT8_OPS", "int8_kernels", "observe_ranges", "run_session", "session_runner"]

INT8_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearConcat",
        "QLinearReduceMean",
        "QLinearSoftmax",
        "NhwcQLinearConv",
        "QAttention",
    }
)
"""Operator types that run integer arithmetic in ONNX Runtime's CPU provider."""


def _session(model: bytes | str, *, optimized_path: str | None = None, threads: int = 1) -> Any:
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()  # type: ignore[attr-defined]
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # type: ignore[attr-defined]
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def run_session(model: bytes | str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a model once per input batch; outputs concatenated along the batch axis."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else None
    runs = [sess.run(None, {name: x if dtype is None else x.astype(dtype)}) for x in inputs]
    return [np.concatenate([r[i] for r in runs]).astype(np.float32) for i in range(len(runs[0]))]


def session_runner(path: str | Path, *, threads: int = 1) -> Callable[[Any], Any]:
    """A function running the ONNX file on a torch batch (any batch size); first output."""
    import torch

    sess = _session(str(path), threads=threads)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run(batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().numpy().astype(dtype, copy=False)
        out = sess.run(None, {inp.name: x})[0]
        return torch.from_numpy(np.asarray(out, np.float32))

    return run


def _observed(
    model: Any, names: Sequence[str], inputs: Sequence[np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, value)`` of the named intermediate tensors of ``model`` for each input batch."""
    onnx = require("onnx", "onnx")
    probe = onnx.ModelProto()  # type: ignore[attr-defined]
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))  # type: ignore[attr-defined]
    sess = _session(probe.SerializeToString())
    in_name = sess.get_inputs()[0].name
    for x in inputs:
        yield from zip(names, sess.run(list(names), {in_name: x}), strict=True)


def observe_ranges(
    model: Any, names: Sequence[str], inputs: Sequence[np.ndarray], observer: str = "minmax"
) -> dict[str, tuple[float, float]]:
    """Ranges of the named intermediate tensors of ``model`` (a ModelProto) over ``inputs``.

    ``observer="minmax"``: their min and max. ``"mse"``: the range, shrunk from
    min/max, whose 8-bit quantization has the least mean squared error on the
    observed values (see :class:`dfcompress.quant.observers.MSE`).
    """
    if observer == "mse":
        return _mse_ranges(model, names, inputs)
    out: dict[str, tuple[float, float]] = {}
    for n, v in _observed(model, names, inputs):
        lo, hi = float(np.min(v)), float(np.max(v))
        if n in out:
            lo, hi = min(lo, out[n][0]), max(hi, out[n][1])
        out[n] = (lo, hi)
    return out


def _mse_ranges(
    model: Any, names: Sequence[str], inputs: Sequence[np.ndarray]
) -> dict[str, tuple[float, float]]:
    import torch

    from dfcompress.quant.observers import MSE

    seen = {n: MSE(0, 255, symmetric=False) for n in names}
    for n, v in _observed(model, names, inputs):
        seen[n].update(torch.from_numpy(np.ascontiguousarray(v, np.float32)))
    out: dict[str, tuple[float, float]] = {}
    for n, obs in seen.items():
        scale, zp = (float(t) for t in obs.qparams())
        out[n] = (-zp * scale, (255 - zp) * scale)
    return out


def int8_kernels(path: str | Path) -> dict[str, int]:
    """Integer operators in the graph ONNX Runtime actually runs after its fusions.

    The model is loaded with ``ORT_ENABLE_EXTENDED`` optimizations (where the QDQ
    fusions happen) and the optimized graph it writes out is counted.
    """
    onnx = require("onnx", "onnx")
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimized.onnx")
        _session(str(path), optimized_path=opt)
        graph = onnx.load(opt).graph  # type: ignore[attr-defined]
    counts = Counter(n.op_type for n in graph.node if n.op_type in INT8_OPS)
    return dict(sorted(counts.items()))
