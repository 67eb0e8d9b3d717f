"""Export of the library's own models, feature modules and quantized models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress.deploy import export_onnx, export_torchscript
from dfcompress.features import NPR, FeatureStack, MagnitudeSpectrum, PhaseSpectrum
from dfcompress.models import BNext
from dfcompress.quant import quantize
from test_export_onnx import depthwise_net, resnet_like

pytest.importorskip("onnxruntime")


def small_bnext() -> nn.Module:
    torch.manual_seed(0)
    return BNext((8, 16, 32), num_classes=1).eval()


@pytest.mark.parametrize("make", [resnet_like, depthwise_net, small_bnext])
def test_quantized_model_runs_int8_kernels(make: type[nn.Module], tmp_path: Path) -> None:
    net = make()
    x = torch.randn(8, 3, 32, 32)
    q = quantize(net, "int8", calibration=x, progress=False)
    r = export_onnx(q, tmp_path / "q.onnx", x)
    # binary convolutions of a quantized model run as int8 kernels too
    n_conv = sum(type(m).__name__ in ("QuantConv2d", "BinaryConv2d") for m in q.modules())
    assert r.kind == "int8" and r.int8_kernels.get("QLinearConv", 0) == n_conv > 0
    assert r.agreement == 1.0


def test_uint8_weights_reproduce_eager_int8(tmp_path: Path) -> None:
    net = resnet_like(width=16)
    x = torch.randn(8, 3, 32, 32)
    q = quantize(net, "int8", calibration=x, progress=False)
    r = export_onnx(q, tmp_path / "q.onnx", x, int8_weights="uint8")
    assert r.weights == "uint8" and r.int8_kernels.get("QLinearConv", 0) == 5
    with torch.no_grad():
        spread = float(q(x).abs().max())
    assert r.max_abs_diff < 0.02 * spread + 1e-3


def test_fp16_quantized_model_exports_half_weights(tmp_path: Path) -> None:
    net = resnet_like(width=32)
    x = torch.randn(4, 3, 16, 16)
    f32 = export_onnx(net, tmp_path / "f.onnx", x)
    f16 = export_onnx(quantize(net, "fp16", progress=False), tmp_path / "h.onnx", x)
    assert f16.kind == "16bit" and f16.agreement == 1.0
    assert f16.file_bytes < 0.6 * f32.file_bytes


def test_float_bnext_round_trip(tmp_path: Path) -> None:
    r = export_onnx(small_bnext(), tmp_path / "b.onnx", torch.randn(2, 3, 32, 32))
    assert r.kind == "float" and r.max_abs_diff < 1e-4


@pytest.mark.parametrize(
    "feature", [NPR(), PhaseSpectrum(), MagnitudeSpectrum()], ids=["npr", "phase", "magnitude"]
)
def test_feature_modules_export(feature: nn.Module, tmp_path: Path) -> None:
    x = torch.rand(2, 3, 16, 16)
    r = export_onnx(feature, tmp_path / "f.onnx", x, atol=1e-3)
    assert r.max_abs_diff < 1e-3
    t = export_torchscript(feature, tmp_path / "f.pt", x, atol=1e-3)
    assert t.max_abs_diff < 1e-3


def test_feature_stack_detector_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stack = FeatureStack([NPR(), PhaseSpectrum()])
    net = nn.Sequential(
        stack,
        nn.Conv2d(stack.out_channels, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 1),
    ).eval()
    x = torch.rand(4, 3, 16, 16)
    r = export_onnx(net, tmp_path / "d.onnx", x, atol=1e-3)
    assert r.agreement == 1.0


@pytest.mark.parametrize("method", ["trace", "script"])
def test_torchscript_bnext_round_trip(method: str, tmp_path: Path) -> None:
    net = small_bnext()
    x = torch.randn(2, 3, 32, 32)
    r = export_torchscript(net, tmp_path / "b.pt", x, method=method)  # type: ignore[arg-type]
    loaded = torch.jit.load(str(tmp_path / "b.pt"))
    y = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(y).numpy(), net(y).numpy(), atol=1e-5)
    assert r.format == "torchscript" and r.agreement == 1.0


def test_torchscript_quantized_round_trip(tmp_path: Path) -> None:
    net = resnet_like()
    x = torch.randn(4, 3, 16, 16)
    q = quantize(net, "int8", calibration=x, progress=False)
    r = export_torchscript(q, tmp_path / "q.pt", x)
    assert r.max_abs_diff < 1e-5


@pytest.mark.zoo
def test_efficientnet_b0_int8_export(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1).eval()
    x = torch.randn(2, 3, 64, 64)
    f = export_onnx(net, tmp_path / "f.onnx", x, atol=1e-3)
    assert f.agreement == 1.0
    q = quantize(net, "int8", calibration=x, progress=False)
    r = export_onnx(q, tmp_path / "q.onnx", x, atol=1.0, min_agreement=0.5)
    assert r.int8_kernels.get("QLinearConv", 0) > 0
