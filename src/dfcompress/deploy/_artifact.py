"""The artifact an export writes, and the one agreement check every target shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfcompress.errors import DfcompressError

__all__ = ["Agreement", "Artifact", "check_agreement", "flat_outputs", "predictions"]

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Agreement:
    """How well an exported file reproduces the eager model it was made from.

    Attributes:
        max_abs_diff: Largest absolute output difference over the checked samples.
        bound: The largest difference allowed (``atol + rtol * max|y|``).
        agreement: Fraction of samples with the same decision (sigmoid of a one-logit
            head > 0.5, else argmax); None when the output is not a score.
        min_agreement: The smallest agreement allowed.
        samples: How many samples were compared.
    """

    max_abs_diff: float
    bound: float
    agreement: float | None
    min_agreement: float
    samples: int

    @property
    def passed(self) -> bool:
        """Whether both figures are within their thresholds."""
        ok_diff = self.max_abs_diff <= self.bound
        ok_agree = self.agreement is None or self.agreement >= self.min_agreement
        return ok_diff and ok_agree


@dataclass(frozen=True)
class Artifact:
    """A deployable file and the runtime that runs it.

    Attributes:
        path: The file written.
        target: The runtime it is for (``"xnnpack"``, ``"onnxruntime"``, ``"torchscript"``).
        size_bytes: Size of the file on disk.
        agreement: The check export ran against the eager model (None if skipped).
        details: Target-specific facts (opset, exporter, integer kernels, ...).
    """

    path: Path
    target: str
    size_bytes: int
    agreement: Agreement | None
    details: dict[str, Any] = field(default_factory=dict)
    _runner: Runner | None = field(default=None, repr=False, compare=False)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the file on ``batch`` in its own runtime; returns the first output."""
        if self._runner is None:
            raise DfcompressError(f"the {self.target!r} artifact at {self.path} cannot be run here")
        return self._runner(batch)


def flat_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list, dict), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_outputs(o)]
    raise DfcompressError(f"cannot compare a model output of type {type(out).__name__}")


def predictions(y: np.ndarray) -> np.ndarray | None:
    """Decisions of a score output: one logit > 0, else the argmax; None otherwise."""
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        return np.asarray(y.reshape(-1) > 0)
    if y.ndim == 2:
        return np.asarray(y.argmax(axis=1))
    return None


def check_agreement(
    ref: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float,
    min_agreement: float,
    what: str,
    raise_below: bool = True,
) -> Agreement:
    """Compare a file's outputs with the eager model's; raise with the figures if below.

    Args:
        ref: The eager model's outputs.
        got: The file's outputs, same shapes.
        atol: Absolute tolerance.
        rtol: Tolerance relative to the largest eager output.
        min_agreement: Smallest fraction of equal decisions allowed.
        what: Names the file in the error message.
        raise_below: Raise :class:`~dfcompress.DfcompressError` when a figure is out of
            bounds (else only report it).
    """
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=False)):
        raise DfcompressError(
            f"{what} outputs have shapes {[g.shape for g in got]}, the eager model "
            f"{[r.shape for r in ref]}"
        )
    diff = max(
        (float(np.max(np.abs(r - g))) if r.size else 0.0 for r, g in zip(ref, got, strict=True)),
        default=0.0,
    )
    bound = max(
        (atol + rtol * float(np.max(np.abs(r))) if r.size else atol for r in ref), default=atol
    )
    p_ref = predictions(ref[0]) if ref else None
    p_got = predictions(got[0]) if got else None
    agree = None if p_ref is None or p_got is None else float(np.mean(p_ref == p_got))
    n = int(ref[0].shape[0]) if ref and ref[0].ndim else 1
    result = Agreement(diff, bound, agree, min_agreement, n)
    if raise_below and not result.passed:
        raise DfcompressError(
            f"{what} does not reproduce the eager model: max abs diff {diff:.3g} "
            f"(allowed {bound:.3g} = atol {atol:g} + rtol {rtol:g} * max|y|), prediction "
            f"agreement {agree if agree is None else f'{agree:.4f}'} (need >= {min_agreement:g}) "
            f"on {n} samples; pass atol/rtol/min_agreement to loosen the check, or "
            "check=False to skip it"
        )
    return result
