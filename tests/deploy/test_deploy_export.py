"""The export verb for the ONNX Runtime and TorchScript targets: files, runners, checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dfcompress as dfc
from dfcompress.deploy import Artifact, ExportResult, export, export_onnx
from dfcompress.deploy.onnxruntime import load_artifact as load_onnx
from dfcompress.deploy.torchscript import load_artifact as load_pt
from dfcompress.errors import DfcompressError

pytest.importorskip("onnxruntime")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()


@pytest.mark.parametrize(("suffix", "target"), [(".onnx", "onnxruntime"), (".pt", "torchscript")])
def test_export_writes_a_file_whose_runner_takes_any_batch(
    tmp_path: Path, suffix: str, target: str
) -> None:
    net, x = _net(), torch.randn(4, 3, 16, 16)
    art = export(net, tmp_path / f"m{suffix}", x)  # target from the suffix
    assert isinstance(art, Artifact) and art.target == target
    assert art.size_bytes == (tmp_path / f"m{suffix}").stat().st_size > 0
    assert art.agreement is not None and art.agreement.passed and art.agreement.samples == 4
    other = torch.randn(7, 3, 16, 16)
    torch.testing.assert_close(art.run(other), net(other), atol=1e-4, rtol=1e-3)
    loaded = (load_onnx if target == "onnxruntime" else load_pt)(art.path)
    assert loaded.agreement is None
    torch.testing.assert_close(loaded.run(other), art.run(other))


def test_top_level_aliases_are_the_deploy_exports(tmp_path: Path) -> None:
    assert dfc.export is export and dfc.export_onnx is export_onnx
    r = dfc.export_onnx(_net(), tmp_path / "m.onnx", torch.randn(2, 3, 8, 8))
    assert isinstance(r, ExportResult) and r.format == "onnx"


def test_export_check_failure_names_the_figures(tmp_path: Path) -> None:
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.randn_like(x)  # differs on every call

    torch.manual_seed(0)
    with pytest.raises(DfcompressError, match="max abs diff"):
        export(Noisy(), tmp_path / "m.pt", torch.randn(8, 4), target="torchscript")


def test_onnx_options_pass_through_and_land_in_details(tmp_path: Path) -> None:
    art = export(
        _net(), tmp_path / "m.bin", torch.randn(2, 3, 8, 8), target="onnxruntime", opset=15
    )
    assert art.details["opset"] == 15 and art.details["kind"] == "float"


def test_load_artifact_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match="is not a file"):
        load_onnx(tmp_path / "absent.onnx")
