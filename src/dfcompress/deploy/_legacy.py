"""Export a (compressed) detector to ONNX or TorchScript, checked against the eager model.

:func:`export_onnx` writes float, 16-bit, structured-pruned and quantized models.
Quantized models leave PyTorch as QuantizeLinear/DequantizeLinear pairs and are
rewritten into the QDQ pattern ONNX Runtime fuses into int8 kernels (QLinearConv,
QGemm, ...). After writing, the file is run in ONNX Runtime on the example and
compared with the eager model; a mismatch raises :class:`~dfcompress.DfcompressError`
with the numbers. :func:`export_torchscript` does the same with ``torch.jit``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._data import input_dtype, iter_inputs, model_float_dtype
from dfcompress._validate import (
    check_bool,
    check_file_path,
    check_int,
    check_model,
    check_number,
    check_tensor,
    refused_input,
    short,
)
from dfcompress.deploy._onnx_torch import to_onnx
from dfcompress.errors import DfcompressError, require

__all__ = ["ExportResult", "export_onnx", "export_torchscript"]

_DEFAULT_OPSET = 17
_TOL = {"float": (1e-4, 1e-3), "16bit": (2e-2, 2e-2), "int8": (5e-2, 1e-1)}
_MIN_AGREE = {"float": 1.0, "16bit": 1.0, "int8": 0.95}
_CALIBRATION_SAMPLES = 512  # samples observed for the ranges the QDQ graph adds


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how well the file reproduces the eager model.

    Attributes:
        path: The file written.
        format: ``"onnx"`` or ``"torchscript"``.
        kind: ``"float"``, ``"16bit"`` (16-bit weights) or ``"int8"`` (QDQ graph).
        file_bytes: Size of the file on disk.
        opset: ONNX opset (None for TorchScript).
        exporter: ``"torchscript"`` or ``"dynamo"`` for ONNX, ``"trace"``/``"script"`` else.
        max_abs_diff: Largest absolute output difference vs the eager model (NaN unchecked).
        agreement: Fraction of samples with the same prediction at 0.5 (sigmoid of a
            one-logit head, else argmax); None when the output is not a score.
        int8_kernels: Integer operators ONNX Runtime runs after its fusions, by type.
        weights: Storage of the int8 weight codes (``"int8"`` or ``"uint8"``), else None.
    """

    path: Path
    format: Literal["onnx", "torchscript"]
    kind: Literal["float", "16bit", "int8"]
    file_bytes: int
    opset: int | None
    exporter: str
    max_abs_diff: float = float("nan")
    agreement: float | None = None
    int8_kernels: dict[str, int] = field(default_factory=dict)
    weights: str | None = None


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    raise DfcompressError(f"cannot compare a model output of type {type(out).__name__}")


def _eager(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        outs = _flat(model(x))
    return [o.detach().float().cpu().numpy() for o in outs]


def _check_args(model: Any, path: Any, example: Any) -> Path:
    """The checks both exporters share; returns ``path`` as a Path."""
    check_model(model)
    check_tensor(example, "example")
    return Path(check_file_path(path, "path"))


def _input_for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype the model takes (see :func:`dfcompress._data.input_dtype`)."""
    return x.to(input_dtype(model, x)) if x.is_floating_point() else x


def _predictions(y: np.ndarray) -> np.ndarray | None:
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        return np.asarray(y.reshape(-1) > 0)
    if y.ndim == 2:
        return np.asarray(y.argmax(axis=1))
    return None


def _compare(
    ref: list[np.ndarray],
    got: list[np.ndarray],
    *,
    kind: str,
    atol: float | None,
    rtol: float | None,
    min_agreement: float | None,
    what: str,
) -> tuple[float, float | None]:
    a_def, r_def = _TOL[kind]
    atol = a_def if atol is None else atol
    rtol = r_def if rtol is None else rtol
    need = _MIN_AGREE[kind] if min_agreement is None else min_agreement
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=False)):
        raise DfcompressError(
            f"{what} outputs have shapes {[g.shape for g in got]}, the eager model "
            f"{[r.shape for r in ref]}"
        )
    diff = max(
        float(np.max(np.abs(r - g))) if r.size else 0.0 for r, g in zip(ref, got, strict=True)
    )
    bound = max(atol + rtol * float(np.max(np.abs(r))) if r.size else atol for r in ref)
    p_ref, p_got = _predictions(ref[0]), _predictions(got[0])
    agree = None if p_ref is None or p_got is None else float(np.mean(p_ref == p_got))
    if not diff <= bound or (agree is not None and agree < need):
        raise DfcompressError(
            f"{what} does not reproduce the eager model: max abs diff {diff:.3g} "
            f"(allowed {bound:.3g} = atol {atol:g} + rtol {rtol:g} * max|y|), prediction "
            f"agreement {agree if agree is None else f'{agree:.4f}'} (need >= {need:g}); "
            "pass atol/rtol/min_agreement to loosen the check, or check=False to skip it"
        )
    return diff, agree


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
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
) -> ExportResult:
    """Write ``model`` as ONNX; check the file in ONNX Runtime against the eager model.

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
        atol: Absolute tolerance (default 1e-4 float, 2e-2 16-bit, 5e-2 int8).
        rtol: Tolerance relative to the largest eager output (1e-3 float, 2e-2
            16-bit, 0.1 int8).
        min_agreement: Least prediction agreement (default 1.0; 0.95 for int8).

    Returns:
        An :class:`ExportResult` with the check's numbers and, for quantized models,
        the integer kernels ONNX Runtime runs.

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
    onnx = require("onnx", "onnx")
    path = _check_args(model, path, example)
    for flag, value in (
        ("dynamic_batch", dynamic_batch),
        ("dynamic_size", dynamic_size),
        ("check", check),
        ("quantize_conv_outputs", quantize_conv_outputs),
        ("quantize_elementwise", quantize_elementwise),
    ):
        check_bool(value, flag)
    if opset is not None:
        check_int(opset, "opset", low=7, high=23)
    for tol, tol_name in ((atol, "atol"), (rtol, "rtol"), (min_agreement, "min_agreement")):
        if tol is not None:
            check_number(tol, tol_name, low=0.0)
    calibration = calibration_inputs(calibration, limit=_CALIBRATION_SAMPLES)
    opset = _DEFAULT_OPSET if opset is None else int(opset)
    if not 7 <= opset <= 23:
        raise DfcompressError(f"opset={opset} is out of range: use 13..23 (13+ for int8)")
    if int8_weights not in ("auto", "int8", "uint8"):
        raise DfcompressError(
            f"int8_weights={int8_weights!r} is unknown: use 'auto', 'int8' or 'uint8'"
        )
    if range_observer not in ("minmax", "mse"):
        raise DfcompressError(
            f"range_observer={range_observer!r} is unknown: use 'minmax' or 'mse'"
        )
    if binary not in ("auto", "int8", "float"):
        raise DfcompressError(f"binary={binary!r} is unknown: use 'auto', 'int8' or 'float'")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise DfcompressError(
            f"exporter={exporter!r} is unknown: use 'auto', 'torchscript' or 'dynamo'"
        )
    path.parent.mkdir(parents=True, exist_ok=True)

    work = copy.deepcopy(model).eval()
    x = _input_for(work, example.detach().cpu())
    with refused_input("example", example, model):
        _eager(work, x)
    from dfcompress.deploy._onnx_qdq import has_qdq, to_qdq
    from dfcompress.models._binary import int8_codes

    axes = (dynamic_batch, dynamic_size)
    n_binary = int8_codes(work, binary == "int8")
    blob, used = to_onnx(work, x, opset, axes, exporter)
    proto = onnx.load_from_string(blob)  # type: ignore[attr-defined]
    if binary == "auto" and n_binary and has_qdq(proto):
        int8_codes(work)  # the model is quantized: its binary convs become int8 too
        blob, used = to_onnx(work, x, opset, axes, exporter)
        proto = onnx.load_from_string(blob)  # type: ignore[attr-defined]
    int8_codes(work, False)
    from dfcompress.deploy._onnx_runtime import int8_kernels, observe_ranges, run_session

    kind: Literal["float", "16bit", "int8"] = "float"
    tries: list[str | None] = [None]
    if has_qdq(proto):
        if opset < 13:
            raise DfcompressError(f"opset={opset} cannot hold per-channel int8 weights: use >= 13")
        kind = "int8"
        data = x if calibration is None else calibration
        calib = [c.to(x.dtype).numpy() for c in iter_inputs(data, limit=_CALIBRATION_SAMPLES)]
        tries = ["int8", "uint8"] if int8_weights == "auto" and check else [int8_weights]
        if tries == ["auto"]:
            tries = ["int8"]
    elif model_float_dtype(work) != torch.float32:
        kind = "16bit"
    for n, weights in enumerate(tries):
        graph = onnx.ModelProto()  # type: ignore[attr-defined]
        graph.CopyFrom(proto)
        if weights is not None:
            ranges = functools.partial(observe_ranges, graph, inputs=calib, observer=range_observer)
            to_qdq(
                graph,
                ranges,
                weights=weights,
                output_q=quantize_conv_outputs,
                chain=quantize_elementwise,
            )
        try:
            onnx.checker.check_model(graph)  # type: ignore[attr-defined]
        except Exception as e:
            raise DfcompressError(f"the exported graph is not valid ONNX: {e}") from e
        path.write_bytes(graph.SerializeToString())
        result = ExportResult(path, "onnx", kind, path.stat().st_size, opset, used, weights=weights)
        if not check:
            return result
        try:
            diff, agree = _compare(
                _eager(work, x),
                run_session(str(path), [x.numpy()]),
                kind=kind,
                atol=atol,
                rtol=rtol,
                min_agreement=min_agreement,
                what=f"the ONNX file {path}" + (f" ({weights} weights)" if weights else ""),
            )
        except DfcompressError:
            if n + 1 < len(tries):
                continue  # signed weights saturated in ONNX Runtime: try uint8 weights
            raise
        kernels = int8_kernels(path) if kind == "int8" else {}
        return dataclasses.replace(result, max_abs_diff=diff, agreement=agree, int8_kernels=kernels)
    raise AssertionError("unreachable")  # pragma: no cover


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    method: Literal["trace", "script"] = "trace",
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> ExportResult:
    """Write ``model`` as TorchScript; reload the file and compare with the eager model.

    Args:
        model: The model to export (deep-copied, eval mode; the caller's is untouched).
        path: Where to write the ``.pt`` file.
        example: An input batch, used for tracing and for the check.
        method: ``"trace"`` (records one forward) or ``"script"`` (compiles the code).
        check: ``torch.jit.load`` the file and compare its output on ``example``.
        atol: Absolute tolerance (default 1e-4).
        rtol: Tolerance relative to the largest eager output (default 1e-3).

    Returns:
        An :class:`ExportResult` (``format="torchscript"``).

    Raises:
        DfcompressError: Scripting/tracing failed or the file does not reproduce the model.

    >>> import tempfile, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     r = export_torchscript(net, f"{d}/net.pt", torch.randn(3, 4))
    >>> r.format, r.agreement
    ('torchscript', 1.0)
    """
    path = _check_args(model, path, example)
    if method not in ("trace", "script"):
        raise DfcompressError(f"method={short(method)} is unknown: use 'trace' or 'script'")
    check_bool(check, "check")
    for tol, tol_name in ((atol, "atol"), (rtol, "rtol")):
        if tol is not None:
            check_number(tol, tol_name, low=0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).eval()
    x = _input_for(work, example.detach().cpu())
    with refused_input("example", example, model):
        _eager(work, x)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if method == "trace":
                compiled = torch.jit.trace(work, (x,), check_trace=False)  # type: ignore[no-untyped-call]
            else:
                compiled = torch.jit.script(work)
    except Exception as e:  # jit raises many types; re-raised as ours below
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DfcompressError(
            f"cannot {method} {type(model).__name__} with torch.jit: {first}; "
            f"try method={'script' if method == 'trace' else 'trace'!r}"
        ) from e
    torch.jit.save(compiled, str(path))
    is_float = model_float_dtype(work) == torch.float32
    kind: Literal["float", "16bit"] = "float" if is_float else "16bit"
    result = ExportResult(path, "torchscript", kind, path.stat().st_size, None, method)
    if not check:
        return result
    loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    ref = _eager(work, x)
    with torch.no_grad():
        got = [o.detach().float().numpy() for o in _flat(loaded(x))]
    diff, agree = _compare(
        ref,
        got,
        kind=kind,
        atol=atol,
        rtol=rtol,
        min_agreement=None,
        what=f"the TorchScript file {path}",
    )
    return dataclasses.replace(result, max_abs_diff=diff, agreement=agree)
