"""PNG figures of a report: size vs AUC, ROC curves overlaid, Grad-CAM panels (matplotlib, Agg)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dfcompress.errors import require
from dfcompress.evaluate.metrics import roc_curve
from dfcompress.report.result import CamPanel

if TYPE_CHECKING:
    from dfcompress.report.report import Report

__all__ = ["cam_grid", "roc_plot", "size_auc_plot"]


def _pyplot() -> Any:
    mpl: Any = require("matplotlib", "report")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def size_auc_plot(report: Report, path: Path) -> Path:
    """Scatter of file size (MB) against AUC, one labelled point per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    try:
        for r in report.summary():
            if not math.isfinite(r.auc):
                continue
            marker = "s" if r.status == "Baseline" else "o"
            color = {"Baseline": "black", "Stable": "tab:green", "Degraded": "tab:red"}.get(
                r.status, "gray"
            )
            ax.scatter([r.size_mb], [r.auc], marker=marker, color=color)
            ax.annotate(
                r.name, (r.size_mb, r.auc), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.set_xlabel("Size (MB = 10^6 bytes)")
        ax.set_ylabel("AUC")
        ax.set_title("Size vs AUC")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def roc_plot(report: Report, path: Path) -> Path:
    """ROC curves of all variants overlaid (variants with undefined AUC are skipped)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=100)
    try:
        drawn = 0
        for v in report.variants:
            if not math.isfinite(v.metrics.auc):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                roc = roc_curve(report.labels, v.scores)
            ax.plot(roc.fpr, roc.tpr, label=f"{v.name} (AUC {v.metrics.auc:.4f})", lw=1.2)
            drawn += 1
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        if not drawn:
            ax.text(0.5, 0.5, "AUC undefined (single class)", ha="center", va="center")
        else:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title("ROC")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def cam_grid(
    rows: Sequence[tuple[str, Sequence[CamPanel]]],
    images: Mapping[int, npt.NDArray[np.float32]],
    path: Path,
    title: str,
) -> Path:
    """One figure of Grad-CAM overlays, a row per category (empty rows say "none").

    A flat map shows the bare picture labelled "flat" instead of an overlay.
    """
    plt = _pyplot()
    n_cols = max([len(p) for _, p in rows] + [1])
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.9 * n_cols, 2.1 * len(rows)), dpi=90, squeeze=False
    )
    try:
        for r, (row_title, panels) in enumerate(rows):
            for c in range(n_cols):
                ax = axes[r][c]
                ax.axis("off")
                if c >= len(panels):
                    if c == 0:
                        ax.text(0.0, 0.5, f"{row_title}: none", fontsize=8, va="center")
                    continue
                p = panels[c]
                img = images.get(p.index)
                if img is not None:
                    ax.imshow(np.clip(img, 0.0, 1.0), interpolation="nearest")
                if not p.flat:
                    ax.imshow(
                        p.cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear"
                    )
                caption = f"P(fake) {p.score:.3f}" + (" flat" if p.flat else "")
                if c == 0:
                    caption = f"{row_title}\n{caption}"
                ax.set_title(caption, fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
