"""compare(deployed=True): the rows are what the exported files do in their runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import _double_target
from dfcompress.cli import main
from dfcompress.deploy import _targets
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import auc
from dfcompress.io import save
from dfcompress.report import compare


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(_targets.TARGETS, "torchscript", _double_target.__name__)
    return "torchscript"


def _net() -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    head = nn.Linear(4, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0 / 27.0)
        conv.bias.zero_()
        head.weight.fill_(2.0)
        head.bias.fill_(-2.0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    levels = torch.linspace(0.05, 0.95, n)
    x = torch.rand(n, 3, 10, 10, generator=g) * 0.6 + levels[:, None, None, None]
    y = torch.tensor([int(i >= n // 2) ^ int(i % 5 == 0) for i in range(n)])
    return x, y


def test_deployed_rows_score_the_shipped_file(
    tmp_path: Path, double: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _data()
    base, other = _net(), _net()
    other.dfc_target = "torchscript"  # type: ignore[assignment]
    eager_auc = auc(y.numpy(), torch.sigmoid(base(x)).detach().numpy().ravel())
    # the shipped file of every variant answers the opposite of its eager model
    flipped = _double_target._runner

    def runner(model: nn.Module):  # type: ignore[no-untyped-def]
        inner = flipped(model)
        return lambda b: -inner(b)

    monkeypatch.setattr(_double_target, "_runner", runner)
    rep = compare(
        {"baseline": base, "q": other},
        (x, y),
        deployed=True,  # no target=: the baseline goes where the quantized variant goes
        progress=False,
        gradcam=False,
        measure_repeats=1,
        deploy_batch=4,
        export_options={"check": False},
    )
    for v in rep.variants:
        d = v.deployed
        assert d is not None and d.target == "torchscript" and d.eager is not None
        assert d.eager.auc == pytest.approx(eager_auc)
        assert v.metrics.auc == pytest.approx(1.0 - eager_auc)  # the file's, not the model's
        assert v.size_bytes == d.cost.size_bytes > 0
        assert d.cost.batch_n == 4 and d.cost.latency_ms_b1 is not None
        assert d.cost.peak_rss_bytes is not None and d.cost.peak_rss_bytes > 10e6
    md = rep.to_markdown()
    assert "ms/img b4" in md and "Peak RSS MB (fresh process)" in md
    assert rep.cost()[0]["Peak RSS MB (runtime alone)"] == "n/a"  # a TorchScript file
    assert "Deployed files against their eager models" in md
    row = rep.deployment()[0]
    assert row["Runtime"] == "torchscript" and row["Eager AUC"] == f"{eager_auc:.4f}"
    out = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    dep = out["variants"][0]["deployed"]
    assert dep["eager_auc"] == pytest.approx(eager_auc) and dep["batch_n"] == 4


def test_eager_rows_are_unchanged_without_deployed(double: str) -> None:
    x, y = _data()
    rep = compare({"baseline": _net()}, (x, y), progress=False, gradcam=False, measure_repeats=1)
    v = rep.variant("baseline")
    assert v.deployed is None and rep.deployment() == []
    assert "Latency ms/sample" in rep.cost()[0]
    np.testing.assert_allclose(v.scores, torch.sigmoid(_net()(x)).detach().double().numpy().ravel())


def test_a_failing_export_names_the_variant(double: str) -> None:
    x, y = _data()
    with pytest.raises(DfcompressError, match="variant 'baseline' \\(target 'torchscript'\\)"):
        compare(
            {"baseline": _net()},
            (x, y),
            deployed=True,
            target="torchscript",
            progress=False,
            gradcam=False,
            export_options={"atol": -1.0, "rtol": 0.0},
        )
    with pytest.raises(DfcompressError, match="target must be one of"):
        compare({"baseline": _net()}, (x, y), deployed=True, target="tflite", progress=False)


def test_cli_report_deployed(
    tmp_path: Path, double: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.safetensors"
    save(_net(), model)
    code = main(
        [
            "report",
            str(model),
            "--variant",
            f"again={model}",
            "--samples",
            "16",
            "--size",
            "16",
            "--no-gradcam",
            "--no-progress",
            "--target",
            "torchscript",
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [v["deployed"]["target"] for v in data["variants"]] == ["torchscript"] * 2
