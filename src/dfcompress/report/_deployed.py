"""Export each variant for its runtime and evaluate the file that ships, in that runtime.

What ships is what is measured: the deployed row of a variant has the AUC and the
confusion of its exported file run by :meth:`~dfcompress.deploy.Artifact.run`, the
file's bytes, its latency per image at batch 1 and batch N in the runtime, and the peak
memory of a fresh process that loads it and runs one image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress.deploy._artifact import Artifact
from dfcompress.deploy._export import export
from dfcompress.deploy._measure import measure_artifacts
from dfcompress.deploy._targets import SUFFIXES, check_target, target_of
from dfcompress.errors import DfcompressError
from dfcompress.report._scoring import scores_of
from dfcompress.report.report import slug
from dfcompress.report.result import DeployedFigures

__all__ = ["DEFAULT_TARGET", "Shipped", "deploy_targets", "evaluate_deployed"]

DEFAULT_TARGET = "xnnpack"
"""The runtime of variants that name none, when no variant names one either."""

_SUFFIX = {t: s for s, t in SUFFIXES.items()}


@dataclass(frozen=True)
class Shipped:
    """The deployed scores of one variant and the figures of its file."""

    scores: npt.NDArray[np.float64]
    figures: DeployedFigures


def deploy_targets(
    models: Mapping[str, nn.Module], target: str | Mapping[str, str] | None
) -> dict[str, str]:
    """The runtime of each variant.

    A model quantized for a target (``dfc_target``) goes to that target; the others to
    ``target`` (one name, or a mapping from variant name to target for some of them),
    else to the target the quantized variants name (so a float baseline is timed in
    the same runtime as its int8 variants), else to :data:`DEFAULT_TARGET`.

    >>> from torch import nn
    >>> q = nn.Linear(2, 1); q.dfc_target = "onnxruntime"
    >>> deploy_targets({"baseline": nn.Linear(2, 1), "int8": q}, None)
    {'baseline': 'onnxruntime', 'int8': 'onnxruntime'}
    >>> deploy_targets({"baseline": nn.Linear(2, 1), "q4": nn.Linear(2, 1)}, {"q4": "torchscript"})
    {'baseline': 'xnnpack', 'q4': 'torchscript'}
    """
    chosen: dict[str, str] = {}
    if isinstance(target, Mapping):
        unknown = sorted(set(target) - set(models))
        if unknown:
            raise DfcompressError(
                f"target names variants {unknown!r} that are not compared: use some of "
                f"{sorted(models)}"
            )
        chosen = {name: check_target(t) for name, t in target.items()}
        target = None
    elif target is not None:
        check_target(target)
    own = {name: target_of(m) for name, m in models.items()}
    named = [t for t in own.values() if t is not None]
    fallback = target if target is not None else (named[0] if named else DEFAULT_TARGET)
    return {name: t if t is not None else chosen.get(name, fallback) for name, t in own.items()}


def _run_all(art: Artifact, batches: Sequence[torch.Tensor], dtype: torch.dtype) -> Any:
    out = [scores_of(art.run(x.to(dtype))) for x in batches]
    return torch.cat(out).numpy()


def evaluate_deployed(
    models: Mapping[str, nn.Module],
    batches: Sequence[torch.Tensor],
    dtypes: Mapping[str, torch.dtype],
    example: torch.Tensor,
    folder: Path,
    *,
    target: str | Mapping[str, str] | None,
    batch_n: int,
    repeats: int,
    options: Mapping[str, Any],
    memory: bool = True,
) -> dict[str, Shipped]:
    """Export every model into ``folder``, score its file on ``batches``, time and size it.

    Raises:
        DfcompressError: a variant's export failed (its name and target lead the message).
    """
    targets = deploy_targets(models, target)
    artifacts: dict[str, Artifact] = {}
    for i, (name, model) in enumerate(models.items()):
        t = targets[name]
        path = folder / f"{i:02d}_{slug(name)}{_SUFFIX.get(t, '.bin')}"
        try:
            artifacts[name] = export(
                model, path, example.to(dtypes[name]), target=t, **dict(options)
            )
        except DfcompressError as e:
            raise DfcompressError(f"variant {name!r} (target {t!r}): {e}") from e
    scores = {name: _run_all(a, batches, dtypes[name]) for name, a in artifacts.items()}
    # one float32 example for all: the files are timed side by side, interleaved
    costs = measure_artifacts(
        artifacts, example, batch_n=batch_n, repeats=repeats, threads=None, memory=memory
    )
    return {
        name: Shipped(
            np.asarray(scores[name], dtype=np.float64),
            DeployedFigures(
                target=a.target,
                file_name=a.path.name,
                cost=costs[name],
                agreement=a.agreement,
            ),
        )
        for name, a in artifacts.items()
    }
