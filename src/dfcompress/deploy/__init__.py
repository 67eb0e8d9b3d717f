"""Deployment: export a (compressed) detector to the runtime that runs it, checked.

``export(model, path, example, target=...)`` writes the file for one runtime,
runs it on the example in that runtime and compares it with the eager model;
the returned :class:`Artifact` runs the file (``art.run(batch)``).

Targets, one module each: ``xnnpack`` (ExecuTorch ``.pte``), ``onnxruntime``
(QDQ ``.onnx``), ``torchscript`` (``.pt``). :func:`export_onnx` and
:func:`export_torchscript` are the same exports returning an :class:`ExportResult`.
"""

from __future__ import annotations

from dfcompress.deploy._artifact import Agreement as Agreement
from dfcompress.deploy._artifact import Artifact as Artifact
from dfcompress.deploy._export import export as export
from dfcompress.deploy._result import ExportResult as ExportResult
from dfcompress.deploy._targets import TARGETS as TARGETS
from dfcompress.deploy.onnxruntime import export_onnx as export_onnx
from dfcompress.deploy.torchscript import export_torchscript as export_torchscript

__all__ = [
    "TARGETS",
    "Agreement",
    "Artifact",
    "ExportResult",
    "export",
    "export_onnx",
    "export_torchscript",
]
