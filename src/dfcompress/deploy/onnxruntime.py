"""The ``"onnxruntime"`` target: a QDQ ``.onnx`` file run by ONNX Runtime.

:func:`export_artifact` (behind ``dfcompress.export(..., target="onnxruntime")``) and its
older form :func:`export_onnx` write float, 16-bit, pruned and quantized models; quantized
models leave PyTorch as QuantizeLinear/DequantizeLinear pairs and are rewritten into the
QDQ pattern ONNX Runtime fuses into int8 kernels (QLinearConv, QGemm, ...). The file is
then run in ONNX Runtime on the example and compared with the eager model.
:func:`quantize` (behind ``dfcompress.quantize(..., target="onnxruntime")``) makes an
eager model that computes what ONNX Runtime computes from its file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dfcompress.deploy._artifact import Artifact
from dfcompress.deploy._onnx_export import write_onnx
from dfcompress.deploy._onnx_quant import quantize as quantize
from dfcompress.deploy._result import ExportResult, check_paths, to_artifact
from dfcompress.deploy._targets import TARGET_ATTR
from dfcompress.errors import DfcompressError, require

__all__ = ["export_artifact", "export_onnx", "load_artifact", "quantize"]

TARGET = "onnxruntime"
# A model made for this target computes what the file computes: what is left is an
# input landing on the other side of a rounding boundary now and then.
_TARGET_ATOL, _TARGET_RTOL, _TARGET_MIN_AGREEMENT = 2e-2, 5e-2, 0.995


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    check: bool = True,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto",
    int8_weights: Literal["auto", "int8", "uint8"] = "auto",
    quantize_conv_outputs: bool = True,
    quantize_elementwise: bool = True,
    binary: Literal["auto", "int8", "float"] = "auto",
    range_observer: Literal["minmax", "mse"] = "minmax",
    sparse_weights: Literal["auto", "off"] = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
) -> ExportResult:
    """Write ``model`` as ONNX; check the file in ONNX Runtime against the eager model.

    The same export as ``dfcompress.export(model, path, example, target="onnxruntime")``,
    returning an :class:`ExportResult` instead of an :class:`~dfcompress.Artifact`.

    The model is deep-copied and put in eval mode; the caller's model is not touched.
    Models with 16-bit parameters keep them (and their casts) in the graph; the input
    is float32 unless the model only accepts its own 16-bit dtype. Fake-quantized
    models become a QDQ graph that ONNX Runtime runs with int8 kernels: BatchNorm
    after a quantized conv is folded into its per-channel weight scales, biases
    become int32, and where a conv's output does not already feed the next layer's
    input quantizer, a Q/DQ pair is inserted whose range is observed on
    ``calibration`` (default: ``example``).

    Args:
        model: The model to export.
        path: Where to write the ``.onnx`` file (parent folders are created).
        example: An input batch; it fixes every shape but the batch axis.
        opset: ONNX opset (default 17; quantized graphs need >= 13).
        dynamic_batch: Let the batch axis vary in the exported graph.
        dynamic_size: Let the other input axes (height, width, frames) vary too.
        check: Run the file in ONNX Runtime on ``example`` and compare with the model.
        calibration: Inputs (tensor or loader) for the ranges of inserted output Q/DQ.
        exporter: ``"auto"`` tries PyTorch's TorchScript-based exporter, then the dynamo
            one (which knows e.g. FFTs); quantized graphs need the TorchScript one.
        int8_weights: How quantized weights are stored. ``"int8"`` gives ONNX Runtime's
            fastest U8S8 kernels, whose 16-bit pair sums can saturate on x86 CPUs
            without VNNI; ``"uint8"`` (codes + 128) is exact everywhere but slower
            there. ``"auto"`` writes int8 and falls back to uint8 when the numeric
            check fails.
        quantize_conv_outputs: Insert the calibrated Q/DQ after convolutions whose
            output feeds no quantizer, so that they run as int8 kernels. False keeps
            those outputs (and convolutions) in float: exact, slower; useful for
            models that amplify small errors, such as binary networks.
        quantize_elementwise: Also quantize the outputs of the operators between
            quantized convs (Sigmoid, Mul, Add, average pooling; ranges observed on
            ``calibration``, Sigmoid's fixed to [0, 1]) so that ONNX Runtime runs
            them as integer kernels (QLinearSigmoid, QLinearMul, ...) and int8
            tensors stay int8 from conv to conv: faster, one more rounding per
            operator. False keeps them in float.
        binary: How binary convolutions (:class:`~dfcompress.models.BinaryConv2d`)
            are written. ``"int8"``: as exact int8 convolutions (sign activations
            as uint8 codes {0, 2} with zero point 1, weights as int8 {-1, +1} with
            per-channel scale alpha; one byte per weight), run by QLinearConv when
            ``quantize_conv_outputs`` (their outputs are then requantized like any
            other conv's). ``"float"``: as float convolutions. ``"auto"`` (default):
            int8 when the rest of the model is quantized, float otherwise.
        range_observer: How the ranges of the inserted Q/DQ pairs (convolution and
            elementwise outputs) are chosen from ``calibration``: ``"minmax"`` (the
            observed minimum and maximum) or ``"mse"`` (the range, shrunk from
            min/max, whose 8-bit rounding has the least mean squared error; rare
            extreme values are clipped so the common ones keep more precision).
            Ranges the model calibrated itself (``IntQuant(outputs=...)``) are kept.
        sparse_weights: ``"auto"`` (default) stores each pruned weight (1,024
            elements or more, with enough zeros to save 10 % of its bytes: 13 % in
            float32) as a bit mask and its non-zero values, plus a few operators
            that rebuild it. ONNX Runtime rebuilds it once when it loads the file,
            so only the file gets smaller (a 50 %-pruned float32 weight takes
            0.53x). Int8 codes are stored so only where ONNX Runtime still runs
            them as int8 kernels; files below opset 11 stay dense. ``"off"``
            stores every weight dense.
        atol: Absolute tolerance (default 1e-4 float, 2e-2 16-bit, 5e-2 int8).
        rtol: Tolerance relative to the largest eager output (1e-3 float, 2e-2
            16-bit, 0.1 int8).
        min_agreement: Least prediction agreement (default 1.0; 0.95 for int8).

    Returns:
        An :class:`ExportResult` with the check's numbers, the weights stored sparse
        and, for quantized models, the integer kernels ONNX Runtime runs.

    Raises:
        DfcompressError: The model cannot be exported (the message names the operator)
            or the file does not reproduce the model.

    >>> import tempfile, torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 1))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     r = export_onnx(net, f"{d}/net.onnx", torch.randn(4, 3, 8, 8))
    >>> r.kind, r.agreement
    ('float', 1.0)
    """
    p = check_paths(model, path, example)
    return write_onnx(
        model,
        p,
        example,
        opset=opset,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        check=check,
        calibration=calibration,
        exporter=exporter,
        int8_weights=int8_weights,
        quantize_conv_outputs=quantize_conv_outputs,
        quantize_elementwise=quantize_elementwise,
        binary=binary,
        range_observer=range_observer,
        sparse_weights=sparse_weights,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
    )[0]


def _runner(path: Path) -> Any:
    from dfcompress.deploy._onnx_runtime import session_runner

    return session_runner(path)


def export_artifact(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
    **options: Any,
) -> Artifact:
    """Write ``model`` as ONNX for ONNX Runtime and check it.

    ``options`` are those of :func:`export_onnx`, except that the exporter adds no
    rounding of its own to the operators between convolutions by default
    (``quantize_elementwise=False``): a plain eager model computes them in float. A
    model made by :func:`quantize` for this target is written as it computes: its
    convolution outputs carry their uint8 ranges, the operators between them the
    roundings the model does (Q/DQ pairs that ONNX Runtime runs as QLinearSigmoid,
    QLinearMul, ...), its 7-bit weight codes are stored as int8, and the check is
    tighter by default (``atol=0.02``, ``rtol=0.05``, ``min_agreement=0.995``).
    """
    p = check_paths(model, path, example)
    # No rounding the eager model does not do (the target's model carries its own).
    options.setdefault("quantize_elementwise", False)
    if getattr(model, TARGET_ATTR, None) == TARGET:
        options.setdefault("int8_weights", "int8")
        atol = _TARGET_ATOL if atol is None else atol
        rtol = _TARGET_RTOL if rtol is None else rtol
        min_agreement = _TARGET_MIN_AGREEMENT if min_agreement is None else min_agreement
    result, agreement = write_onnx(
        model, p, example, check=check, atol=atol, rtol=rtol, min_agreement=min_agreement, **options
    )
    return to_artifact(result, TARGET, agreement, _runner(p))


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """An existing ``.onnx`` file with its ONNX Runtime runner (no agreement figures)."""
    require("onnxruntime", "onnx")
    p = Path(path)
    if not p.is_file():
        raise DfcompressError(f"path={str(p)!r} is not a file: pass an ONNX .onnx file")
    return Artifact(p, TARGET, p.stat().st_size, None, {}, _runner(p))
