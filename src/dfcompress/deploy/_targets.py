"""Deploy targets by name: which module exports (and quantizes) for which runtime.

Each target lives in its own module of :mod:`dfcompress.deploy`, imported only when
the target is used (its runtime is an optional dependency), and provides

- ``export_artifact(model, path, example, **options) -> Artifact``,
- ``load_artifact(path) -> Artifact``: an existing file with its runner (no agreement),
  used to evaluate and measure files in a fresh process, and
- optionally ``quantize(model, config, calibration, **options) -> nn.Module``, which
  makes an eager model that computes what the runtime computes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from dfcompress.errors import DfcompressError

__all__ = ["SUFFIXES", "TARGETS", "check_target", "infer_target", "target_module", "target_of"]

TARGETS: dict[str, str] = {
    "xnnpack": "dfcompress.deploy.xnnpack",
    "onnxruntime": "dfcompress.deploy.onnxruntime",
    "torchscript": "dfcompress.deploy.torchscript",
}
SUFFIXES: dict[str, str] = {".pte": "xnnpack", ".onnx": "onnxruntime", ".pt": "torchscript"}
_EXTRA = {"xnnpack": "mobile", "onnxruntime": "onnx", "torchscript": None}

TARGET_ATTR = "dfc_target"
"""Attribute a target-quantized model carries, naming the runtime it was made for."""


def check_target(target: Any) -> str:
    """``target`` as a known target name, or a :class:`DfcompressError` naming the allowed ones."""
    if not isinstance(target, str) or target not in TARGETS:
        raise DfcompressError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    return target


def target_module(target: str) -> ModuleType:
    """Import the module of ``target``; a missing runtime names its extra."""
    name = check_target(target)
    try:
        return importlib.import_module(TARGETS[name])
    except ImportError as e:  # the runtime of an optional extra
        extra = _EXTRA[name]
        hint = f' (pip install "dfcompress[{extra}]")' if extra else ""
        raise DfcompressError(
            f"target {name!r} needs a runtime that is not installed{hint}: {e}"
        ) from e


def target_of(model: Any) -> str | None:
    """The target a model was quantized for, if any."""
    t = getattr(model, TARGET_ATTR, None)
    return t if isinstance(t, str) and t in TARGETS else None


def infer_target(model: Any, path: Path, target: str | None) -> str:
    """The target of an export: given, else the model's, else the file suffix's."""
    if target is not None:
        chosen = check_target(target)
        made_for = target_of(model)
        if made_for is not None and made_for != chosen:
            raise DfcompressError(
                f"target={chosen!r} but the model was quantized for {made_for!r}; "
                f"export it with target={made_for!r} or quantize it again for {chosen!r}"
            )
        return chosen
    made_for = target_of(model)
    if made_for is not None:
        return made_for
    by_suffix = SUFFIXES.get(path.suffix.lower())
    if by_suffix is None:
        raise DfcompressError(
            f"cannot tell the target of {str(path)!r}: pass target= (one of {sorted(TARGETS)}) "
            f"or use a suffix among {sorted(SUFFIXES)}"
        )
    return by_suffix
