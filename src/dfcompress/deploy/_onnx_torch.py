"""Run PyTorch's ONNX exporters and turn their failures into errors naming the operator."""

from __future__ import annotations

import io
import re
import warnings

import torch
from torch import nn

from dfcompress.errors import DfcompressError

__all__ = ["to_onnx"]


_OP_RE = re.compile(r"\b((?:aten|prim|quantized|onnx|torchvision)::[A-Za-z0-9_.]+)")


def _op_from_error(e: BaseException) -> str | None:
    m = _OP_RE.search(str(e))
    if m:
        return m.group(1)
    m = re.search(r"operator '?([A-Za-z0-9_.:]+)'?", str(e))
    return m.group(1) if m else None


def _torch_export(
    model: nn.Module, x: torch.Tensor, opset: int, dynamic: tuple[bool, bool], dynamo: bool
) -> bytes:
    buf = io.BytesIO()
    in_axes: dict[int, str] = {0: "batch"} if dynamic[0] else {}
    if dynamic[1]:
        in_axes.update({d: f"dim{d}" for d in range(2, x.dim())})
    out_axes = {0: "batch"} if dynamic[0] else {}
    axes = {"input": in_axes, "output": out_axes} if in_axes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            tmp = torch.onnx.export(
                model,
                (x,),
                input_names=["input"],
                output_names=["output"],
                opset_version=max(opset, 18),
                dynamic_axes=axes,
                dynamo=True,
                verbose=False,
            )
            if tmp is None:  # pragma: no cover - torch always returns a program here
                raise DfcompressError("the dynamo exporter returned no program")
            tmp.optimize()
            return bytes(tmp.model_proto.SerializeToString())
        torch.onnx.export(
            model,
            (x,),
            buf,  # type: ignore[arg-type]  # a file-like object is accepted
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
        )
    return buf.getvalue()


def to_onnx(
    model: nn.Module, x: torch.Tensor, opset: int, dynamic: tuple[bool, bool], exporter: str
) -> tuple[bytes, str]:
    """The serialized ONNX model and the exporter that wrote it (see ``export_onnx``)."""
    order = {
        "auto": ["torchscript", "dynamo"],
        "torchscript": ["torchscript"],
        "dynamo": ["dynamo"],
    }
    first: Exception | None = None
    for name in order[exporter]:
        try:
            return _torch_export(model, x, opset, dynamic, name == "dynamo"), name
        except Exception as e:  # torch raises many types; re-raised as ours below
            first = first or e
    if first is None:  # pragma: no cover - the loop always runs
        raise DfcompressError(f"exporter={exporter!r} is unknown")
    op = _op_from_error(first)
    where = f"operator {op}" if op else "the model"
    raise DfcompressError(
        f"cannot export {type(model).__name__} to ONNX opset {opset}: {where} is not supported "
        f"({type(first).__name__}: {str(first).splitlines()[0][:300]}); replace that operation, "
        "try another opset, or use export_torchscript"
    ) from first
