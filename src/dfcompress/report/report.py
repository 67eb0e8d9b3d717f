"""The :class:`Report` of a comparison: tables, insights, and ``save`` to md/html/json/png."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.delong import auc_difference, auc_interval
from dfcompress.evaluate.metrics import fmt
from dfcompress.report._insights import SummaryRow, key_insights, summary_rows
from dfcompress.report._model import ModelInfo
from dfcompress.report.result import CATEGORIES, Mismatch, VariantResult

__all__ = ["Report", "slug"]


def slug(text: str) -> str:
    """A file-name-safe form of a variant name.

    >>> slug("q8-p50"), slug("../<b>")
    ('q8-p50', '____b_')
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40] or "_"


@dataclass
class Report:
    """The comparison of variants built by :func:`~dfcompress.report.compare`.

    Attributes:
        title: Report title.
        variants: One :class:`VariantResult` per variant, baseline included.
        labels: Per-sample labels (1 = fake), shared by all variants.
        names: Per-sample names.
        baseline: Name of the reference variant.
        tolerance: Absolute AUC a "Stable" variant may lose.
        threshold: Decision threshold on P(fake).
        notes: Header lines (data, resolution, subsets).
        images: Pictures ``[H, W, 3]`` of the samples shown in Grad-CAM panels, by index.
        top_k: Rows per variant in the worst-mismatches table.
        model: The baseline detector (architecture, logical parameters, input size).
        level: Confidence level of the AUC intervals (DeLong).
    """

    title: str
    variants: list[VariantResult]
    labels: npt.NDArray[np.int64]
    names: list[str]
    baseline: str
    tolerance: float = 0.01
    threshold: float = 0.5
    notes: list[str] = field(default_factory=list)
    images: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    top_k: int = 5
    model: ModelInfo | None = None
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.baseline not in [v.name for v in self.variants]:
            raise DfcompressError(f"baseline {self.baseline!r} is not one of the variants")

    def variant(self, name: str) -> VariantResult:
        """The result of one variant by name."""
        for v in self.variants:
            if v.name == name:
                return v
        raise DfcompressError(
            f"no variant {name!r} in the report: it has {[v.name for v in self.variants]}"
        )

    def latency(self, v: VariantResult) -> float | None:
        """The latency per image the speed-up uses: the file's at batch 1 when deployed."""
        if v.deployed is not None:
            return v.deployed.cost.latency_ms_b1
        return v.measurement.latency_ms if v.measurement is not None else None

    def summary(self) -> list[SummaryRow]:
        """The performance summary rows (size, reduction, AUC with its DeLong interval,
        diff with its paired interval, speed-up, Stable/Degraded)."""
        base = self.variant(self.baseline).scores
        ivs = [auc_interval(self.labels, v.scores, self.level) for v in self.variants]
        diffs = [auc_difference(self.labels, base, v.scores, self.level) for v in self.variants]
        return summary_rows(
            [v.name for v in self.variants],
            [v.size_bytes for v in self.variants],
            [v.metrics.auc for v in self.variants],
            self.baseline,
            self.tolerance,
            intervals=[(i.low, i.high) for i in ivs],
            diff_intervals=[(d.low, d.high) for d in diffs],
            latencies=[self.latency(v) for v in self.variants],
        )

    def model_rows(self) -> list[dict[str, str]]:
        """The "Model" table: parameters (logical count) and what changed, per variant."""
        base_params = self.variant(self.baseline).params
        rows = []
        for v in self.variants:
            change = "n/a"
            if v.params is not None and base_params:
                change = f"{100.0 * (v.params / base_params - 1.0):+.1f}"
            rows.append(
                {
                    "Model": v.name,
                    "Recipe": v.recipe or "-",
                    "Params": "n/a" if v.params is None else f"{v.params:,}",
                    "Params vs baseline %": "-" if v.name == self.baseline else change,
                    "What changed": v.changes or "n/a",
                }
            )
        return rows

    def undefined_reason(self) -> str | None:
        """Why AUC is undefined (single-class data), if it is."""
        for v in self.variants:
            for note in v.metrics.notes:
                if "undefined" in note:
                    return note
        return None

    def insights(self) -> list[str]:
        """Key insights: highest AUC, best compression within tolerance, largest drop."""
        return key_insights(
            self.summary(), self.tolerance, undefined_reason=self.undefined_reason()
        )

    def quality(self) -> list[dict[str, str]]:
        """The classification-quality table at the threshold ("n/a" on zero denominators)."""
        rows = []
        for v in self.variants:
            c = v.metrics.confusion
            rows.append(
                {
                    "Model": v.name,
                    "Samples": str(v.metrics.n_samples),
                    "TP": str(c.tp),
                    "TN": str(c.tn),
                    "FP": str(c.fp),
                    "FN": str(c.fn),
                    "Precision": fmt(c.precision),
                    "Recall": fmt(c.recall),
                    "F1": fmt(c.f1),
                    "Accuracy": fmt(c.accuracy),
                }
            )
        return rows

    def cost(self) -> list[dict[str, str]]:
        """Latency per sample, peak memory, parameters and MACs per sample, per variant.

        Deployed variants show their file's latency at batch 1 and N in its runtime,
        the peak RSS of a fresh process that loads it and runs one image, and for
        ``.pte`` files that of ExecuTorch's C++ runtime alone doing the same; eager ones
        the eager model's latency and the peak of this process during one forward.
        """
        rows = []
        for v in self.variants:
            m = v.measurement
            d = v.deployed.cost if v.deployed is not None else None
            row = {"Model": v.name}
            if d is not None:
                row["Runtime"] = v.deployed.target if v.deployed else ""
                row["ms/img b1"] = fmt(d.latency_ms_b1, 3)
                row[f"ms/img b{d.batch_n}"] = fmt(d.latency_ms_bn, 3)
                row["Peak RSS MB (fresh process)"] = fmt(d.peak_rss_mb, 1)
                row["Peak RSS MB (runtime alone)"] = fmt(d.runtime_rss_mb, 1)
            else:
                row["Latency ms/sample"] = fmt(m.latency_ms if m else None, 3)
                row["Peak RSS MB"] = fmt(
                    m.peak_rss_bytes / 1e6 if m and m.peak_rss_bytes else None, 1
                )
            params = v.params if v.params is not None else (m.params if m else None)
            row["Params"] = "n/a" if params is None else f"{params:,}"
            row["Non-zero params"] = f"{m.nonzero_params:,}" if m else "n/a"
            per_img = m.macs // max(1, m.batch_size or 1) if m and m.macs is not None else None
            row["MACs/img"] = "n/a" if per_img is None else f"{per_img:,}"
            row["Input dtype"] = v.input_dtype
            rows.append(row)
        return rows

    def deployment(self) -> list[dict[str, str]]:
        """Per deployed variant: runtime, file, eager vs deployed AUC, agreement figures."""
        rows = []
        for v in self.variants:
            d = v.deployed
            if d is None:
                continue
            a = d.agreement
            eager = d.eager.auc if d.eager is not None else math.nan
            rows.append(
                {
                    "Model": v.name,
                    "Runtime": d.target,
                    "File MB": f"{d.cost.size_bytes / 1e6:.3f}",
                    "Eager AUC": fmt(eager),
                    "Deployed AUC": fmt(v.metrics.auc),
                    "Deployed - eager": (
                        f"{v.metrics.auc - eager:+.4f}"
                        if math.isfinite(v.metrics.auc - eager)
                        else "n/a"
                    ),
                    "Max abs diff": "n/a" if a is None else f"{a.max_abs_diff:.3g}",
                    "Decision agreement": fmt(a.agreement if a is not None else None),
                }
            )
        return rows

    def video(self) -> list[dict[str, str]]:
        """Video-level rows, for the variants where frames grouped into videos."""
        rows = []
        for v in self.variants:
            if v.video is None:
                continue
            rows.append(
                {
                    "Model": v.name,
                    "Videos": str(v.video.n_samples),
                    "Video AUC": fmt(v.video.auc),
                    "Frame AUC": fmt(v.metrics.auc),
                    "Video accuracy": fmt(v.video.confusion.accuracy),
                }
            )
        return rows

    def mismatches(self, k: int | None = None) -> list[Mismatch]:
        """Per variant, the ``k`` samples whose P(fake) moved most against the baseline."""
        k = self.top_k if k is None else k
        base = self.variant(self.baseline).scores
        out: list[Mismatch] = []
        t = self.threshold
        for v in self.variants:
            if v.name == self.baseline:
                continue
            change = np.abs(v.scores - base)
            ok = np.flatnonzero(np.isfinite(change))
            order = ok[np.argsort(-change[ok], kind="mergesort")][:k]
            for i in order:
                i = int(i)
                out.append(
                    Mismatch(
                        v.name,
                        i,
                        self.names[i],
                        int(self.labels[i]),
                        float(base[i]),
                        float(v.scores[i]),
                        bool((base[i] > t) != (v.scores[i] > t)),
                    )
                )
        return out

    def flips(self) -> dict[str, int]:
        """Per variant, how many samples changed prediction against the baseline."""
        base = self.variant(self.baseline).scores
        t = self.threshold
        return {
            v.name: int(((base > t) != (v.scores > t)).sum())
            for v in self.variants
            if v.name != self.baseline
        }

    def to_dict(self) -> dict[str, Any]:
        """Every number of the report, plus the raw per-sample labels and scores."""

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else x

        return {
            "title": self.title,
            "baseline": self.baseline,
            "tolerance": self.tolerance,
            "threshold": self.threshold,
            "notes": list(self.notes),
            "size_unit": "MB = 10^6 bytes",
            "ci_level": self.level,
            "ci_method": "DeLong (paired for differences)",
            "model": self.model.as_dict() if self.model is not None else None,
            "summary": [
                {
                    "model": r.name,
                    "size_bytes": r.size_bytes,
                    "size_mb": r.size_mb,
                    "reduction_pct": num(r.reduction_pct),
                    "auc": num(r.auc),
                    "auc_ci": [num(r.auc_low), num(r.auc_high)],
                    "diff_vs_baseline": num(r.diff),
                    "diff_ci": [num(r.diff_low), num(r.diff_high)],
                    "speedup_vs_baseline": num(r.speedup),
                    "status": r.status,
                }
                for r in self.summary()
            ],
            "insights": self.insights(),
            "flips_vs_baseline": self.flips(),
            "mismatches": [
                {
                    "variant": m.variant,
                    "index": m.index,
                    "name": m.name,
                    "label": m.label,
                    "baseline_score": num(m.baseline_score),
                    "score": num(m.score),
                    "change": num(m.change),
                    "flip": m.flip,
                }
                for m in self.mismatches()
            ],
            "samples": {"names": list(self.names), "labels": [int(y) for y in self.labels]},
            "variants": [v.as_dict() for v in self.variants],
        }

    def to_markdown(self) -> str:
        """The report as markdown, without pictures (see :meth:`save` for the full one)."""
        from dfcompress.report.render import markdown

        return markdown(self, {})

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, folder: str | Path, *, plots: bool = True) -> Path:
        """Write ``report.md``, ``report.html``, ``report.json`` and PNGs into ``folder``.

        Image links are relative to the folder. Plots and Grad-CAM panels need
        the ``report`` extra (matplotlib); the HTML needs jinja2.

        Returns:
            The folder.
        """
        from dfcompress.report.plots import cam_grid, roc_plot, size_auc_plot
        from dfcompress.report.render import html, markdown

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        figures: dict[str, Any] = {}
        if plots:
            figures["size_auc"] = size_auc_plot(self, out / "size_vs_auc.png").name
            figures["roc"] = roc_plot(self, out / "roc.png").name
            cams: dict[str, str] = {}
            short = {
                "resolved_fakes": "resolved fakes",
                "missed_fakes": "missed fakes",
                "false_positives": "false positives",
                "true_negatives": "true negatives",
            }
            for i, v in enumerate(self.variants):
                if not any(v.cams.values()):
                    continue
                path = out / f"gradcam_{i:02d}_{slug(v.name)}.png"
                rows = [(short[c], v.cams.get(c, [])) for c in CATEGORIES]
                cam_grid(rows, self.images, path, f"Grad-CAM: {v.name}")
                cams[v.name] = path.name
            figures["cams"] = cams
        (out / "report.md").write_text(markdown(self, figures), encoding="utf-8")
        (out / "report.html").write_text(html(self, figures), encoding="utf-8")
        (out / "report.json").write_text(
            json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8"
        )
        return out
