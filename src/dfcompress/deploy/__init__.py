"""Deployment: export a (compressed) detector to the runtime that runs it, checked.

``export(model, path, example, target=...)`` writes the file for one runtime,
runs it on the example in that runtime and compares it with the eager model;
the returned :class:`Artifact` runs the file (``art.run(batch)``).

Targets, one module each: ``xnnpack`` (ExecuTorch ``.pte``), ``onnxruntime``
(QDQ ``.onnx``), ``torchscript`` (``.pt``).
"""

from __future__ import annotations

from dfcompress.deploy._artifact import Agreement as Agreement
from dfcompress.deploy._artifact import Artifact as Artifact
from dfcompress.deploy._export import export as export
from dfcompress.deploy._targets import TARGETS as TARGETS

__all__ = ["TARGETS", "Agreement", "Artifact", "export"]
