"""What :func:`~dfcompress.report.compare` measured: one :class:`VariantResult` per model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dfcompress.deploy._artifact import Agreement
from dfcompress.deploy._measure import DeployedCost
from dfcompress.evaluate.measure import Measurement
from dfcompress.evaluate.metrics import Metrics

__all__ = ["CATEGORIES", "CamPanel", "Category", "DeployedFigures", "Mismatch", "VariantResult"]

Category = Literal["resolved_fakes", "missed_fakes", "false_positives", "true_negatives"]
CATEGORIES: dict[Category, str] = {
    "resolved_fakes": "Resolved fakes (fake, called fake)",
    "missed_fakes": "Missed fakes (fake, called real)",
    "false_positives": "False positives (real, called fake)",
    "true_negatives": "True negatives (real, called real)",
}
"""Grad-CAM sample categories and their titles."""


@dataclass(frozen=True)
class CamPanel:
    """One Grad-CAM heat map of one sample.

    Attributes:
        index: Sample index in the evaluated data.
        name: Sample name.
        label: 1 = fake, 0 = real.
        score: The variant's P(fake).
        cam: ``[H, W]`` map in [0, 1] (zeros when ``flat``).
        flat: The map had no variation: shown as "flat", not normalized into noise.
    """

    index: int
    name: str
    label: int
    score: float
    cam: npt.NDArray[np.float32]
    flat: bool


@dataclass(frozen=True)
class Mismatch:
    """A sample whose score changed most against the baseline."""

    variant: str
    index: int
    name: str
    label: int
    baseline_score: float
    score: float
    flip: bool

    @property
    def change(self) -> float:
        """``score - baseline_score``."""
        return self.score - self.baseline_score


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class DeployedFigures:
    """What a variant's exported file does in its runtime (``compare(..., deployed=True)``).

    Attributes:
        target: The runtime (``"xnnpack"``, ``"onnxruntime"``, ``"torchscript"``).
        file_name: The file written (in a temporary folder).
        cost: File bytes, latency per image at batch 1 and N, fresh-process peak RSS.
        agreement: The export's check of the file against the eager model.
        eager: The eager model's metrics on the same data (the row's own metrics are
            the file's).
    """

    target: str
    file_name: str
    cost: DeployedCost
    agreement: Agreement | None
    eager: Metrics | None = None

    def with_eager(self, eager: Metrics) -> DeployedFigures:
        """These figures with the eager model's metrics."""
        return replace(self, eager=eager)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures."""
        a = self.agreement
        return {
            "target": self.target,
            "file_name": self.file_name,
            **self.cost.as_dict(),
            "agreement": None
            if a is None
            else {
                "max_abs_diff": _num(a.max_abs_diff),
                "bound": _num(a.bound),
                "decision_agreement": _num(a.agreement),
                "samples": a.samples,
                "passed": a.passed,
            },
            "eager_auc": None if self.eager is None else _num(self.eager.auc),
        }


@dataclass
class VariantResult:
    """Everything measured for one variant.

    Attributes:
        name: Variant name.
        recipe: The recipe it was built with, if any.
        scores: Per-sample P(fake), float64 (NaN where the model gave NaN/Inf).
        metrics: Frame-level metrics at the report's threshold.
        size_bytes: Serialized size, the file :func:`dfcompress.save` writes.
        measurement: Params, MACs, latency and peak memory (None if not measured).
        video: Video-level metrics, when samples group into videos.
        cams: Grad-CAM panels per category.
        notes: Human-readable remarks (dropped scores, a float32 Grad-CAM copy, ...).
        input_dtype: The dtype inputs were cast to for this model.
        deployed: The exported file's figures when compared deployed; ``scores``,
            ``metrics`` and ``size_bytes`` are then the file's.
        params: Parameter elements, packed weights at their logical count.
        changes: What compression did to its layers (from :func:`dfcompress.summary`).
    """

    name: str
    recipe: str | None
    scores: npt.NDArray[np.float64]
    metrics: Metrics
    size_bytes: int
    measurement: Measurement | None = None
    video: Metrics | None = None
    cams: dict[Category, list[CamPanel]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_dtype: str = "float32"
    deployed: DeployedFigures | None = None
    params: int | None = None
    changes: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures (scores included, NaN as ``None``)."""
        m = self.measurement
        return {
            "name": self.name,
            "recipe": self.recipe,
            "size_bytes": self.size_bytes,
            "size_mb": self.size_bytes / 1e6,
            "metrics": self.metrics.as_dict(),
            "video_metrics": self.video.as_dict() if self.video is not None else None,
            "measurement": m.as_dict() if m is not None else None,
            "latency_ms_per_sample": _num(m.latency_ms) if m is not None else None,
            "peak_rss_mb": (m.peak_rss_bytes / 1e6 if m and m.peak_rss_bytes else None),
            "input_dtype": self.input_dtype,
            "params": self.params,
            "changes": self.changes,
            "deployed": None if self.deployed is None else self.deployed.as_dict(),
            "notes": list(self.notes),
            "gradcam": {
                cat: [
                    {
                        "index": p.index,
                        "name": p.name,
                        "label": p.label,
                        "score": _num(p.score),
                        "flat": p.flat,
                    }
                    for p in panels
                ]
                for cat, panels in self.cams.items()
            },
            "scores": [_num(float(s)) for s in self.scores],
        }
