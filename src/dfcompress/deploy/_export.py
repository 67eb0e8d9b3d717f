"""The one export verb."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfcompress._validate import check_file_path, check_model, check_tensor
from dfcompress.deploy._artifact import Artifact
from dfcompress.deploy._targets import infer_target, target_module

__all__ = ["export"]


def export(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    target: str | None = None,
    **options: Any,
) -> Artifact:
    """Write ``model`` for a deploy runtime, check the file against the eager model, return it.

    Args:
        model: The model to export (float, 16-bit, pruned or quantized).
        path: File to write.
        example: An input batch; also the data the agreement check runs on.
        target: ``"xnnpack"`` (ExecuTorch ``.pte``), ``"onnxruntime"`` (QDQ ``.onnx``) or
            ``"torchscript"`` (``.pt``). Default: the target the model was quantized for,
            else the one the file suffix names.
        **options: Passed to the target's exporter (tolerances ``atol``, ``rtol``,
            ``min_agreement``, ``check``, and target-specific ones).

    Returns:
        The :class:`Artifact`: ``.run(batch)`` runs the file in its runtime.

    Raises:
        DfcompressError: bad arguments, a missing runtime, or a file that does not
            reproduce the eager model within the thresholds (the message has the figures).
    """
    check_model(model)
    check_tensor(example, "example")
    p = Path(check_file_path(path, "path"))
    name = infer_target(model, p, target)
    artifact: Artifact = target_module(name).export_artifact(model, p, example, **options)
    return artifact
