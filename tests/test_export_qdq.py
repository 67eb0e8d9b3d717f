"""Quantized models export as QDQ graphs that ONNX Runtime runs with int8 kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.deploy import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class FQ(nn.Module):
    """A conv/linear layer fake-quantized the way PyTorch's own ops do it.

    Per-channel symmetric int8 weights, per-tensor uint8 input with a fixed range.
    """

    def __init__(self, layer: nn.Module, lo: float = -3.0, hi: float = 3.0) -> None:
        super().__init__()
        self.layer = layer
        w = layer.weight.detach()
        self.register_buffer("w_scale", w.flatten(1).abs().amax(1).clamp_min(1e-8) / 127)
        self.register_buffer("w_zp", torch.zeros(w.shape[0], dtype=torch.int32))
        self.scale = (hi - lo) / 255
        self.zp = round(-lo / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zp, 0, 255)
        w = torch.fake_quantize_per_channel_affine(
            self.layer.weight, self.w_scale, self.w_zp, 0, -128, 127
        )
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        c = self.layer
        return nn.functional.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


class QBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = FQ(nn.Conv2d(c, c, 3, padding=1)), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = FQ(nn.Conv2d(c, c, 3, padding=1), 0.0, 4.0), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def q_resnet(width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        FQ(nn.Conv2d(3, width, 3, stride=2, padding=1)),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        QBlock(width),
        QBlock(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        FQ(nn.Linear(width, 1), 0.0, 4.0),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)  # negative gammas flip weight signs
    return net.eval()


def q_depthwise() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        FQ(nn.Conv2d(3, 16, 3, padding=1)),
        nn.ReLU(),
        FQ(nn.Conv2d(16, 16, 3, padding=1, groups=16), 0.0, 3.0),
        nn.ReLU(),
        FQ(nn.Conv2d(16, 8, 1), 0.0, 3.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        FQ(nn.Linear(8, 2)),
    ).eval()


def unwrap(net: nn.Module) -> nn.Module:
    """The same network with every FQ replaced by its float layer."""
    for name, child in net.named_children():
        setattr(net, name, child.layer if isinstance(child, FQ) else unwrap(child))
    return net


def _convs(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in net.modules())


@pytest.mark.parametrize("make", [q_resnet, q_depthwise])
def test_every_quantized_conv_runs_as_qlinearconv(make: type[nn.Module], tmp_path: Path) -> None:
    net = make()
    x = torch.randn(16, 3, 16, 16)
    r = export_onnx(net, tmp_path / "q.onnx", x)
    assert r.kind == "int8"
    assert r.int8_kernels.get("QLinearConv", 0) == _convs(net)
    assert r.int8_kernels.get("QGemm", 0) + r.int8_kernels.get("QLinearMatMul", 0) >= 1
    assert r.agreement is not None and r.agreement >= 0.95


def test_int8_file_is_smaller_than_float(tmp_path: Path) -> None:
    net = q_resnet(width=32)
    x = torch.randn(4, 3, 16, 16)
    q = export_onnx(net, tmp_path / "q.onnx", x)
    plain = unwrap(net)
    f = export_onnx(plain, tmp_path / "f.onnx", x, check=False)
    assert q.file_bytes < 0.4 * f.file_bytes


def test_weights_are_stored_as_int8_initializers(tmp_path: Path) -> None:
    export_onnx(q_resnet(), tmp_path / "q.onnx", torch.randn(4, 3, 16, 16))
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)


@settings(max_examples=5)
@given(seed=st.integers(0, 10_000))
def test_int8_onnx_tracks_eager_fake_quant(seed: int) -> None:
    """ORT's int8 graph stays within two input codes of the head of the eager model.

    The inserted conv-output quantizers and code flips from reordered float sums
    are the only differences; a wrong BatchNorm fold or bias scale is far outside.
    """
    import tempfile

    net = q_resnet(seed=seed)
    torch.manual_seed(seed)
    x = torch.randn(8, 3, 16, 16)
    with tempfile.TemporaryDirectory() as d:
        r = export_onnx(net, f"{d}/q.onnx", x, min_agreement=0.0, atol=1e9, int8_weights="uint8")
    head = net[-1]
    one_code = head.scale * float(head.layer.weight.detach().abs().sum())
    assert r.max_abs_diff <= 2 * one_code + 1e-3


def test_calibration_data_sets_inserted_ranges(tmp_path: Path) -> None:
    net = q_resnet()
    x = torch.randn(4, 3, 16, 16)
    big = [torch.randn(4, 3, 16, 16) * 4 for _ in range(3)]
    a = export_onnx(net, tmp_path / "a.onnx", x)
    b = export_onnx(net, tmp_path / "b.onnx", x, calibration=big, atol=1.0, min_agreement=0.0)

    def out_scales(p: Path) -> list[float]:
        g = onnx.load(str(p)).graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        return [float(inits[i]) for i in inits if i.startswith("out_scale")]

    assert a.int8_kernels == b.int8_kernels
    assert np.mean(out_scales(tmp_path / "b.onnx")) > np.mean(out_scales(tmp_path / "a.onnx"))


def test_float_conv_outputs_when_asked(tmp_path: Path) -> None:
    """Without inserted output quantizers the file computes what the model does, up to
    the rounding of a code where float and integer sums differ in the last bit."""
    net = q_resnet()
    x = torch.randn(8, 3, 16, 16)
    r = export_onnx(net, tmp_path / "q.onnx", x, quantize_conv_outputs=False, int8_weights="uint8")
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert not any(t.name.startswith("out_scale") for t in graph.initializer)
    head = net[-1]
    assert r.max_abs_diff <= head.scale * float(head.layer.weight.detach().abs().sum()) / 2
    # convs whose output feeds the next input quantizer still fuse
    assert r.int8_kernels.get("QLinearConv", 0) >= 2
