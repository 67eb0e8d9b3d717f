"""compare() and Report.save(): scores, Grad-CAM, escaping, links, JSON consistency."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import summarize
from dfcompress.report import Report, compare

HOSTILE = "<script>alert(1)</script>.png"


def _detector(two_logits: bool, padding: int = 0) -> nn.Module:
    """Score rises with the image's brightness: conv of positive weights, pool, linear."""
    conv = nn.Conv2d(3, 4, 3, padding=padding)
    head = nn.Linear(4, 2 if two_logits else 1)
    with torch.no_grad():
        conv.weight.fill_(1.0 / 27.0)
        conv.bias.zero_()
        if two_logits:
            head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            head.bias.copy_(torch.tensor([1.0, -1.0]))
        else:
            head.weight.fill_(2.0)
            head.bias.fill_(-2.0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Bright and dark images of both classes, so TP, FN, FP and TN all occur."""
    g = torch.Generator().manual_seed(0)
    levels = torch.linspace(0.05, 0.95, n)
    x = torch.rand(n, 3, 12, 12, generator=g) * 0.4 + levels[:, None, None, None]
    x[:, :, :6] *= 0.5  # spatial structure for Grad-CAM
    y = torch.tensor([(i // 2) % 2 for i in range(n)])
    names = [f"real/r_{i}.png" if int(y[i]) == 0 else f"fake/f_{i}.png" for i in range(n)]
    names[0] = HOSTILE
    return x, y, names


@pytest.mark.parametrize("two_logits", [False, True])
def test_gradcam_panels_for_one_and_two_logit_heads(two_logits: bool) -> None:
    x, y, names = _data()
    net = _detector(two_logits)
    rep = compare({"baseline": net}, [(x, y, names)], progress=False, measure_repeats=1)
    v = rep.variant("baseline")
    # P(fake) = sigmoid of the log-odds, whatever the head
    logit = net(x)
    z = logit[:, 1] - logit[:, 0] if two_logits else logit[:, 0]
    np.testing.assert_allclose(v.scores, torch.sigmoid(z.double()).detach().numpy(), rtol=1e-6)
    pred = v.scores > 0.5
    expected = {
        "resolved_fakes": (y.numpy() == 1) & pred,
        "missed_fakes": (y.numpy() == 1) & ~pred,
        "false_positives": (y.numpy() == 0) & pred,
        "true_negatives": (y.numpy() == 0) & ~pred,
    }
    for cat, mask in expected.items():
        panels = v.cams[cat]  # type: ignore[index]
        assert len(panels) == min(5, int(mask.sum())) > 0
        assert all(mask[p.index] for p in panels)
        assert all(p.cam.shape == (12, 12) and not p.flat for p in panels)
    tp = [p.score for p in v.cams["resolved_fakes"]]
    assert tp == sorted(tp, reverse=True)  # the most confident resolved fakes first


def test_a_flat_map_is_labelled_flat(tmp_path: Path) -> None:
    x = torch.full((4, 3, 8, 8), 0.9)
    x[2:] = 0.1
    y = torch.tensor([1, 0, 1, 0])
    rep = compare({"baseline": _detector(False)}, (x, y), progress=False, measure_repeats=1)
    panels = [p for ps in rep.variant("baseline").cams.values() for p in ps]
    assert panels and all(p.flat for p in panels)
    assert all(float(np.abs(p.cam).max()) == 0.0 for p in panels)
    rep.save(tmp_path)
    assert "(flat map)" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """A float, a cast (q16) and a whole-bfloat16 variant, evaluated in two batches and saved."""
    x, y, names = _data()
    base = _detector(False, padding=1)
    rep = compare(
        {"baseline": base, "q16": "q16", "bf16-model": _detector(False, 1).to(torch.bfloat16)},
        [(x[:12], y[:12], names[:12]), (x[12:], y[12:], names[12:])],
        progress=False,
        measure_repeats=1,
    )
    return rep, rep.save(tmp_path_factory.mktemp("report"))


def test_hostile_names_are_escaped_and_links_resolve(saved: tuple[Report, Path]) -> None:
    _, out = saved
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in html and "<script>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    links = re.findall(r'<img src="([^"]+)"', html)
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and set(md_links) == set(links)
    for link in links:
        assert not Path(link).is_absolute() and ".." not in link
        assert (out / link).is_file() and (out / link).read_bytes()[:4] == b"\x89PNG"
    text = html + md
    assert "MB" in text
    assert all(ord(c) < 0x2500 for c in text), "no emoji or box-drawing mojibake"


def test_json_agrees_with_metrics_recomputed_from_its_raw_scores(
    saved: tuple[Report, Path],
) -> None:
    rep, out = saved
    data = json.loads((out / "report.json").read_text())
    labels = data["samples"]["labels"]
    assert len(data["samples"]["names"]) == len(labels) == 24
    rows = {r["model"]: r for r in data["summary"]}
    base_auc = rows["baseline"]["auc"]
    for v in data["variants"]:
        scores = [math.nan if s is None else s for s in v["scores"]]
        m = summarize(labels, scores, threshold=data["threshold"])
        assert v["metrics"]["auc"] == pytest.approx(m.auc)
        assert rows[v["name"]]["auc"] == pytest.approx(m.auc)
        for k in ("tp", "tn", "fp", "fn"):
            assert v["metrics"]["confusion"][k] == getattr(m.confusion, k)
        assert rows[v["name"]]["diff_vs_baseline"] == pytest.approx(m.auc - base_auc)
        assert rows[v["name"]]["size_mb"] == pytest.approx(v["size_bytes"] / 1e6)
    bf16 = rep.variant("bf16-model")
    assert bf16.input_dtype == "bfloat16" and np.isfinite(bf16.scores).all()
    assert bf16.scores.dtype == np.float64
    assert any("float32 copy" in n for n in bf16.notes)


def test_single_class_data_does_not_crash(tmp_path: Path) -> None:
    x, _, _ = _data(8)
    y = torch.ones(8, dtype=torch.long)
    rep = compare(
        {"baseline": _detector(False), "q16": "q16"},
        (x, y),
        progress=False,
        measure_repeats=1,
        gradcam=False,
    )
    assert math.isnan(rep.variant("q16").metrics.auc)
    assert rep.insights()[0].startswith("AUC is undefined for every variant: all 8 samples")
    rep.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"][0]["auc"] is None
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_mismatches_pair_the_same_samples() -> None:
    x, y, _names = _data()
    base = _detector(False)
    worse = _detector(False)
    with torch.no_grad():
        worse[4].bias.fill_(-1.0)  # every score moves up
    rep = compare(
        {"baseline": base, "worse": worse}, (x, y), progress=False, measure_repeats=1, gradcam=False
    )
    rows = rep.mismatches()
    b, w = rep.variant("baseline").scores, rep.variant("worse").scores
    top = np.sort(np.abs(w - b))[::-1][:5]
    np.testing.assert_allclose([abs(m.change) for m in rows], top)
    assert rep.flips()["worse"] == int(((b > 0.5) != (w > 0.5)).sum())


def test_bad_arguments_are_clear_errors() -> None:
    x, y, _ = _data(4)
    with pytest.raises(DfcompressError, match="baseline='baseline' is not among"):
        compare({"a": _detector(False)}, (x, y), progress=False)
    with pytest.raises(DfcompressError, match="labels must be 0"):
        compare({"baseline": _detector(False)}, (x, y + 2), progress=False)
    with pytest.raises(DfcompressError, match="unknown recipe token"):
        compare({"baseline": _detector(False), "v": "q9"}, (x, y), progress=False)


def test_macs_are_counted_per_image_whatever_the_example_batch() -> None:
    x, y, _ = _data()
    net = _detector(False)
    # conv 3->4, 3x3 on 12x12 (10x10 out): 4*27*100 = 10,800; head 4 -> 1: 4
    for batch in (1, 8):
        rep = compare({"baseline": net}, (x, y), example=x[:batch], progress=False, gradcam=False)
        assert rep.cost()[0]["MACs/img"] == "10,804"


class _FunctionalConv(nn.Module):
    """Its convolution is a function call, as in an exported graph: no module to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((4, 3, 3, 3), 1.0 / 27.0))
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(torch.nn.functional.conv2d(x, self.w)).mean(dim=(2, 3))
        out: torch.Tensor = self.head(f)
        return out


def test_a_model_without_feature_maps_gets_a_note_instead_of_grad_cam() -> None:
    x, y, _ = _data()
    rep = compare(
        {"baseline": _detector(False), "graph": _FunctionalConv()}, (x, y), progress=False
    )
    graph = rep.variant("graph")
    assert any("no Grad-CAM" in n for n in graph.notes)
    assert not any(graph.cams.values()) and any(rep.variant("baseline").cams.values())
