"""Grad-CAM panels of the samples of each outcome, and the pictures they show."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress.evaluate.gradcam import NoFeatureMapError, grad_cam
from dfcompress.report.result import CATEGORIES, CamPanel, Category, VariantResult

__all__ = ["cams", "panel_images", "pick"]


def _float32_copy(model: nn.Module) -> nn.Module:
    """A float32 copy for Grad-CAM of half-precision models (cast layers included)."""
    twin = copy.deepcopy(model).float()
    for m in twin.modules():
        if isinstance(getattr(m, "dtype", None), torch.dtype):
            setattr(m, "dtype", torch.float32)  # noqa: B010  (cast layers cast inputs to it)
            if hasattr(m, "dtype_name"):
                setattr(m, "dtype_name", "float32")  # noqa: B010
    return twin


def pick(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], threshold: float, k: int
) -> dict[Category, list[int]]:
    ok = np.isfinite(scores)
    fake_called = scores > threshold
    groups: dict[Category, tuple[npt.NDArray[np.bool_], bool]] = {
        "resolved_fakes": ((labels == 1) & fake_called & ok, True),
        "missed_fakes": ((labels == 1) & ~fake_called & ok, False),
        "false_positives": ((labels == 0) & fake_called & ok, True),
        "true_negatives": ((labels == 0) & ~fake_called & ok, False),
    }
    out: dict[Category, list[int]] = {}
    for cat, (mask, highest) in groups.items():
        idx = np.flatnonzero(mask)
        order = np.argsort(-scores[idx] if highest else scores[idx], kind="mergesort")
        out[cat] = [int(i) for i in idx[order][:k]]
    return out


def cams(
    model: nn.Module,
    inputs: torch.Tensor,
    picks: dict[Category, list[int]],
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    names: Sequence[str],
    dtype: torch.dtype,
    notes: list[str],
) -> dict[Category, list[CamPanel]]:
    chosen = [i for cat in CATEGORIES for i in picks[cat]]
    if not chosen:
        return {cat: [] for cat in CATEGORIES}
    x = inputs[chosen]
    target: nn.Module = model
    if dtype != torch.float32:
        target = _float32_copy(model)
        notes.append(f"Grad-CAM ran on a float32 copy of this {dtype} model")
    try:
        try:
            cam = grad_cam(target, x.float())
        except RuntimeError:
            cam = grad_cam(_float32_copy(model), x.float())
            notes.append("Grad-CAM ran on a float32 copy of this model")
    except NoFeatureMapError:
        # e.g. a model quantized for a runtime: an exported graph of operators, not modules
        notes.append("no Grad-CAM: no layer of this model outputs a [N, C, H, W] map to explain")
        return {cat: [] for cat in CATEGORIES}
    maps = cam.maps.detach().float().numpy()
    flat = cam.flat.numpy()
    out: dict[Category, list[CamPanel]] = {}
    j = 0
    for cat in CATEGORIES:
        panels = []
        for i in picks[cat]:
            panels.append(
                CamPanel(i, names[i], int(labels[i]), float(scores[i]), maps[j], bool(flat[j]))
            )
            j += 1
        out[cat] = panels
    return out


def panel_images(
    inputs: torch.Tensor, results: Sequence[VariantResult]
) -> dict[int, npt.NDArray[np.float32]]:
    """``[H, W, 3]`` pictures in [0, 1] of the samples shown in Grad-CAM panels."""
    wanted = sorted({p.index for r in results for ps in r.cams.values() for p in ps})
    out: dict[int, npt.NDArray[np.float32]] = {}
    for i in wanted:
        x = inputs[i].detach().float()
        if x.dim() != 3:
            continue
        x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:  # normalized inputs: stretch for display
            x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        out[i] = x.permute(1, 2, 0).numpy().astype(np.float32)
    return out
