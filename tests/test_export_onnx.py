"""ONNX export: round trips through ONNX Runtime, int8 kernels, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress.deploy import ExportResult, export_onnx
from dfcompress.errors import DfcompressError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def resnet_like(width: int = 8, classes: int = 1) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        Block(width),
        Block(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )
    for m in net.modules():  # non-trivial BatchNorm statistics, negative gammas included
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    return net.eval()


def depthwise_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        nn.Conv2d(16, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 2),
    ).eval()


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("make", [resnet_like, depthwise_net])
def test_float_round_trip_matches_eager(make: type[nn.Module], tmp_path: Path) -> None:
    net = make()
    x = torch.randn(6, 3, 16, 16)
    r = export_onnx(net, tmp_path / "m.onnx", x)
    assert isinstance(r, ExportResult) and r.kind == "float" and r.agreement == 1.0
    assert r.file_bytes == (tmp_path / "m.onnx").stat().st_size
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    # dynamic batch: another batch size runs and matches the eager model
    x2 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "m.onnx", x2), net(x2).numpy(), atol=1e-4)


def test_export_does_not_touch_the_model(tmp_path: Path) -> None:
    net = resnet_like().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx(net, tmp_path / "m.onnx", torch.randn(2, 3, 16, 16))
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_static_batch_when_asked(tmp_path: Path) -> None:
    export_onnx(resnet_like(), tmp_path / "m.onnx", torch.randn(2, 3, 16, 16), dynamic_batch=False)
    dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2


def test_dynamic_size_accepts_other_resolutions(tmp_path: Path) -> None:
    net = resnet_like()
    export_onnx(net, tmp_path / "m.onnx", torch.randn(2, 3, 16, 16), dynamic_size=True)
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "m.onnx", x), net(x).numpy(), atol=1e-4)


def test_fp16_model_stores_half_weights(tmp_path: Path) -> None:
    net = resnet_like(width=32)
    f32 = export_onnx(net, tmp_path / "f32.onnx", torch.randn(4, 3, 16, 16))
    f16 = export_onnx(net.half(), tmp_path / "f16.onnx", torch.randn(4, 3, 16, 16))
    assert f16.kind == "16bit" and f16.agreement == 1.0
    assert f16.file_bytes < 0.6 * f32.file_bytes


def test_structured_shrunk_model_is_smaller(tmp_path: Path) -> None:
    big = export_onnx(resnet_like(width=32), tmp_path / "a.onnx", torch.randn(2, 3, 16, 16))
    small = export_onnx(resnet_like(width=16), tmp_path / "b.onnx", torch.randn(2, 3, 16, 16))
    assert small.file_bytes < 0.4 * big.file_bytes


class Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.flatten(2)).sum(-1)


def test_unexportable_op_is_named(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match="linalg_svd"):
        export_onnx(Unexportable(), tmp_path / "m.onnx", torch.randn(2, 3, 4, 4))


class Fft(nn.Module):
    """Phase-only image by torch.fft: only the dynamo exporter knows these operators."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.fft2(x.mean(1, keepdim=True))
        return torch.fft.ifft2(f / f.abs().clamp_min(1e-6)).real


@pytest.mark.slow
def test_auto_falls_back_to_the_dynamo_exporter(tmp_path: Path) -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(DfcompressError, match="aten::fft_fft2"):
        export_onnx(Fft(), tmp_path / "m.onnx", x, exporter="torchscript")
    r = export_onnx(Fft(), tmp_path / "m.onnx", x, atol=1e-4)
    assert r.exporter == "dynamo" and r.max_abs_diff < 1e-4


class Noisy(nn.Module):
    """Draws noise in forward: eager and ONNX Runtime draw different numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + 10 * torch.randn_like(x))


def test_mismatch_fails_loudly_with_numbers(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=r"max abs diff [0-9.e+-]+ .*agreement"):
        export_onnx(Noisy(), tmp_path / "m.onnx", torch.randn(64, 4))
    r = export_onnx(Noisy(), tmp_path / "m.onnx", torch.randn(64, 4), check=False)
    assert r.path.exists() and np.isnan(r.max_abs_diff)


@pytest.mark.parametrize("bad", [{"opset": 3}, {"exporter": "tflite"}])
def test_bad_arguments_are_rejected(bad: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=str(next(iter(bad.values())))):
        export_onnx(resnet_like(), tmp_path / "m.onnx", torch.randn(1, 3, 8, 8), **bad)  # type: ignore[arg-type]
