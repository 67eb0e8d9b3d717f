"""The report's Model section, AUC intervals and the claims the key insights make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dfcompress.evaluate.delong import auc_difference, auc_interval
from dfcompress.report import compare


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)
    ).eval()


class _Nudged(nn.Module):
    """The baseline plus a tiny sample-dependent change: a higher AUC by noise at most."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 1e-3 * x[:, :1, :1, :1].flatten(1)


def _data(n: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 10, 10, generator=g) + 0.15 * y[:, None, None, None]
    return x, y


def test_model_section_intervals_and_claims(tmp_path: Path) -> None:
    x, y = _data()
    base = _net()
    rep = compare(
        {"baseline": base, "q8": "q8", "nudged": _Nudged(base)},
        (x, y),
        progress=False,
        gradcam=False,
        measure_repeats=2,
    )
    assert rep.model is not None
    assert rep.model.architecture == "torch.nn.modules.container.Sequential"
    assert rep.model.input_shape == (3, 10, 10)
    assert rep.model.params == 3 * 8 * 9 + 8 + 8 + 1
    # packed int8 weights count at their logical count, not as missing parameters
    assert rep.variant("q8").params == rep.model.params
    assert rep.variant("q8").changes.startswith("2 layers int8")
    assert rep.variant("baseline").changes == "2 layers float (not selected: 2)"

    rows = {r.name: r for r in rep.summary()}
    labels = rep.labels
    iv = auc_interval(labels, rep.variant("q8").scores)
    assert (rows["q8"].auc_low, rows["q8"].auc_high) == pytest.approx((iv.low, iv.high))
    assert rows["q8"].auc_low < rows["q8"].auc < rows["q8"].auc_high
    d = auc_difference(labels, rep.variant("baseline").scores, rep.variant("nudged").scores)
    assert (rows["nudged"].diff_low, rows["nudged"].diff_high) == pytest.approx((d.low, d.high))
    assert rows["nudged"].speedup > 0 and rows["baseline"].speedup == 1.0
    insights = rep.insights()
    assert not any(s.startswith("Better than the baseline") for s in insights)
    # timing is the machine's: either line, but speed is always stated
    assert any(s.startswith(("Fastest: ", "No variant is faster")) for s in insights)

    md = rep.to_markdown()
    assert "## Model" in md and "Architecture: torch.nn.modules.container.Sequential" in md
    assert "AUC 95% CI" in md and "Speed-up vs baseline" in md and "Input: 3x10x10" in md
    rep.save(tmp_path, plots=False)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["model"]["params"] == rep.model.params
    q8 = next(r for r in data["summary"] if r["model"] == "q8")
    assert q8["auc_ci"] == pytest.approx([iv.low, iv.high])
    assert "Architecture" in (tmp_path / "report.html").read_text()
