"""What the ONNX and TorchScript exporters share: the result type, the tolerances, the eager run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dfcompress._data import input_dtype
from dfcompress._validate import check_file_path, check_model, check_number, check_tensor
from dfcompress.deploy._artifact import Agreement, Artifact, check_agreement, flat_outputs

__all__ = [
    "ExportResult",
    "check_file",
    "check_paths",
    "check_tolerances",
    "eager_outputs",
    "input_for",
    "to_artifact",
]

Kind = Literal["float", "16bit", "int8"]
_TOL: dict[str, tuple[float, float]] = {
    "float": (1e-4, 1e-3),
    "16bit": (2e-2, 2e-2),
    "int8": (5e-2, 1e-1),
}
_MIN_AGREE = {"float": 1.0, "16bit": 1.0, "int8": 0.95}


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
        sparse_tensors: Weights stored as a bit mask and their non-zero values (ONNX).
        sparse_bytes_saved: How many bytes smaller that made the file.
    """

    path: Path
    format: Literal["onnx", "torchscript"]
    kind: Kind
    file_bytes: int
    opset: int | None
    exporter: str
    max_abs_diff: float = float("nan")
    agreement: float | None = None
    int8_kernels: dict[str, int] = field(default_factory=dict)
    weights: str | None = None
    sparse_tensors: int = 0
    sparse_bytes_saved: int = 0


def check_paths(model: Any, path: Any, example: Any) -> Path:
    """The checks every exporter shares; returns ``path`` as a Path."""
    check_model(model)
    check_tensor(example, "example")
    return Path(check_file_path(path, "path"))


def check_tolerances(**tolerances: float | None) -> None:
    """Each given tolerance is a number >= 0."""
    for name, value in tolerances.items():
        if value is not None:
            check_number(value, name, low=0.0)


def input_for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype the model takes (see :func:`dfcompress._data.input_dtype`)."""
    return x.to(input_dtype(model, x)) if x.is_floating_point() else x


def eager_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """The model's outputs on ``x`` as float32 arrays."""
    with torch.no_grad():
        outs = flat_outputs(model(x))
    return [o.detach().float().cpu().numpy() for o in outs]


def check_file(
    ref: list[np.ndarray],
    got: list[np.ndarray],
    *,
    kind: str,
    atol: float | None,
    rtol: float | None,
    min_agreement: float | None,
    what: str,
) -> Agreement:
    """:func:`~dfcompress.deploy._artifact.check_agreement` with the defaults of ``kind``."""
    a_def, r_def = _TOL[kind]
    return check_agreement(
        ref,
        got,
        atol=a_def if atol is None else atol,
        rtol=r_def if rtol is None else rtol,
        min_agreement=_MIN_AGREE[kind] if min_agreement is None else min_agreement,
        what=what,
    )


def to_artifact(
    result: ExportResult,
    target: str,
    agreement: Agreement | None,
    runner: Callable[[torch.Tensor], torch.Tensor] | None,
) -> Artifact:
    """The :class:`Artifact` of an :class:`ExportResult` (its facts go to ``details``)."""
    details: dict[str, Any] = {"kind": result.kind, "exporter": result.exporter}
    if result.opset is not None:
        details["opset"] = result.opset
    if result.weights is not None:
        details["weights"] = result.weights
    if result.int8_kernels:
        details["int8_kernels"] = dict(result.int8_kernels)
    if result.sparse_tensors:
        details["sparse_tensors"] = result.sparse_tensors
        details["sparse_bytes_saved"] = result.sparse_bytes_saved
    return Artifact(result.path, target, result.file_bytes, agreement, details, runner)
