"""Write a model as ONNX (QDQ for quantized models) and check the file in ONNX Runtime.

The machinery behind the ``"onnxruntime"`` target and :func:`~dfcompress.export_onnx`;
its options are documented there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._data import iter_inputs, model_float_dtype
from dfcompress._validate import check_bool, check_int, refused_input
from dfcompress.deploy._artifact import Agreement
from dfcompress.deploy._onnx_sparse import write_sparse
from dfcompress.deploy._onnx_torch import to_onnx
from dfcompress.deploy._result import (
    ExportResult,
    Kind,
    check_file,
    check_tolerances,
    eager_outputs,
    input_for,
)
from dfcompress.errors import DfcompressError, require

__all__ = ["CALIBRATION_SAMPLES", "write_onnx"]

_DEFAULT_OPSET = 17
CALIBRATION_SAMPLES = 512  # samples observed for the ranges the QDQ graph adds


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise DfcompressError(f"{name}={value!r} is unknown: use {choices}")


def _check_options(opts: dict[str, Any]) -> None:
    for flag in (
        "dynamic_batch",
        "dynamic_size",
        "check",
        "quantize_conv_outputs",
        "quantize_elementwise",
    ):
        check_bool(opts[flag], flag)
    if opts["opset"] is not None:
        check_int(opts["opset"], "opset", low=7, high=23)
    check_tolerances(atol=opts["atol"], rtol=opts["rtol"], min_agreement=opts["min_agreement"])
    _check_choice(opts["int8_weights"], "int8_weights", ("auto", "int8", "uint8"))
    _check_choice(opts["range_observer"], "range_observer", ("minmax", "mse"))
    _check_choice(opts["binary"], "binary", ("auto", "int8", "float"))
    _check_choice(opts["exporter"], "exporter", ("auto", "torchscript", "dynamo"))
    _check_choice(opts["sparse_weights"], "sparse_weights", ("auto", "off"))


def write_onnx(
    model: nn.Module,
    path: Path,
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
) -> tuple[ExportResult, Agreement | None]:
    """Write ``model`` to ``path`` as ONNX; the result and the check (None if not checked)."""
    onnx = require("onnx", "onnx")
    _check_options(dict(locals()))
    calibration = calibration_inputs(calibration, limit=CALIBRATION_SAMPLES)
    opset = _DEFAULT_OPSET if opset is None else int(opset)
    path.parent.mkdir(parents=True, exist_ok=True)

    work = copy.deepcopy(model).eval()
    x = input_for(work, example.detach().cpu())
    with refused_input("example", example, model):
        eager_outputs(work, x)
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

    kind: Kind = "float"
    tries: list[str | None] = [None]
    if has_qdq(proto):
        if opset < 13:
            raise DfcompressError(f"opset={opset} cannot hold per-channel int8 weights: use >= 13")
        kind = "int8"
        data = x if calibration is None else calibration
        calib = [c.to(x.dtype).numpy() for c in iter_inputs(data, limit=CALIBRATION_SAMPLES)]
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
        n_sparse, saved = 0, 0
        if sparse_weights == "auto":
            n_sparse, saved = write_sparse(graph, path, quantized=kind == "int8")
        else:
            path.write_bytes(graph.SerializeToString())
        result = ExportResult(
            path,
            "onnx",
            kind,
            path.stat().st_size,
            opset,
            used,
            weights=weights,
            sparse_tensors=n_sparse,
            sparse_bytes_saved=saved,
        )
        if not check:
            return result, None
        try:
            agreement = check_file(
                eager_outputs(work, x),
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
        result = dataclasses.replace(
            result,
            max_abs_diff=agreement.max_abs_diff,
            agreement=agreement.agreement,
            int8_kernels=kernels,
        )
        return result, agreement
    raise AssertionError("unreachable")  # pragma: no cover
