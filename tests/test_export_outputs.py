"""Models quantized with IntQuant(outputs=...) export with their own output scales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress.deploy import export_onnx
from dfcompress.quant import QuantLayer, quantize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class SENet(nn.Module):
    """Stem, expansion, depthwise, squeeze-and-excitation, projection with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU()
        )
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU())
        self.dw = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.SiLU()
        )
        self.reduce, self.expand = nn.Conv2d(32, 4, 1), nn.Conv2d(4, 32, 1)
        self.pwl = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(self.pw(x))
        gate = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(y.mean((2, 3), True)))))
        x = x + self.pwl(y * gate)
        return self.fc(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = SENet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
    return net.eval()


def _diff(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    r = export_onnx(
        model,
        path,
        x[:4],
        calibration=x,
        int8_weights="uint8",  # exact integer products on every CPU
        quantize_elementwise=False,
        atol=1e3,
        min_agreement=0.0,
    )
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_simulated_outputs_make_eager_and_onnx_agree(tmp_path: Path) -> None:
    net = _net()
    x = torch.randn(64, 3, 16, 16)
    plain = quantize(net, "int8", calibration=x, progress=False)
    sim = quantize(net, "int8-onnx", calibration=x, progress=False)
    d_plain = _diff(plain, tmp_path / "plain.onnx", x)
    d_sim = _diff(sim, tmp_path / "sim.onnx", x)
    # The plain model does not round conv outputs but ONNX Runtime does: it differs by
    # that rounding; the simulated model computes what ONNX Runtime computes.
    assert d_sim < 0.01, d_sim
    assert d_sim < d_plain / 4, (d_sim, d_plain)


def test_exporter_uses_the_calibrated_output_scales(tmp_path: Path) -> None:
    net = _net()
    x = torch.randn(32, 3, 16, 16)
    sim = quantize(net, "int8-onnx", calibration=x, progress=False)
    r = export_onnx(sim, tmp_path / "sim.onnx", x[:4], calibration=x, int8_weights="uint8")
    assert r.int8_kernels.get("QLinearConv") == 6
    model = onnx.load(str(r.path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not any(name.startswith("out_scale") for name in inits)  # no ranges of its own
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scales = sorted(
        float(inits[q.input[1]])
        for conv in model.graph.node
        if conv.op_type == "Conv"
        for q in consumers.get(conv.output[0], [])
        if q.op_type == "QuantizeLinear"
    )
    expected = sorted(
        float(m.output_scale)
        for m in sim.modules()
        if isinstance(m, QuantLayer) and m.output_scale is not None
    )
    assert len(scales) == 6
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


class Chain(nn.Module):
    """Convolutions that feed each other with no operator in between."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x))).relu().mean((2, 3))


def test_conv_into_conv_is_rounded_once_and_fused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Chain().eval()
    x = torch.randn(32, 3, 12, 12)
    sim = quantize(net, "int8-onnx", calibration=x, progress=False)
    r = export_onnx(sim, tmp_path / "chain.onnx", x[:4], calibration=x, int8_weights="uint8")
    # Without removing the output Q/DQ in front of the next input Q, ONNX Runtime
    # leaves the following convolutions in float.
    assert r.int8_kernels.get("QLinearConv") == 3
    model = onnx.load(str(r.path))
    prod = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in prod:
            assert prod[n.input[0]].op_type != "DequantizeLinear"  # no DQ -> Q requantization
    with torch.no_grad():
        assert r.max_abs_diff < 0.05 * float(sim(x[:4]).abs().max())


class Spiky(nn.Module):
    """A 1x1 convolution that passes its heavy-tailed input on, then a float operator."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            # mostly the identity; the mixing puts each output channel on its own
            # grid (an output that is the input codes lies on one grid, whose step
            # the range observers take as the scale's unit)
            mix = torch.tensor([[1.0, 0.13, -0.07], [0.05, 0.9, 0.11], [-0.09, 0.06, 1.1]])
            self.conv.weight.copy_(mix.reshape(3, 3, 1, 1))
            self.conv.bias.zero_()
        self.fc = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))


def _out_scale(path: Path) -> float:
    model = onnx.load(str(path))
    scales = [
        float(onnx.numpy_helper.to_array(t))
        for t in model.graph.initializer
        if t.name.startswith("out_scale")
    ]
    assert len(scales) == 1
    return scales[0]


def test_mse_ranges_clip_rare_extremes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Spiky().eval()
    calib = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    calib[2][0, :, 5, 5] = 40.0  # two extreme pixels stretch the conv output's min/max
    calib[2][1, :, 6, 6] = -40.0
    q = quantize(net, "int8", calibration=calib, progress=False)
    kw = {"calibration": calib, "int8_weights": "uint8", "atol": 1e3, "min_agreement": 0.0}
    wide = export_onnx(q, tmp_path / "minmax.onnx", calib[0][:4], **kw)  # type: ignore[arg-type]
    tight = export_onnx(q, tmp_path / "mse.onnx", calib[0][:4], range_observer="mse", **kw)  # type: ignore[arg-type]
    assert _out_scale(tight.path) < 0.5 * _out_scale(wide.path)


def test_unknown_range_observer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="range_observer='max' is unknown"):
        export_onnx(nn.Linear(2, 1), tmp_path / "x.onnx", torch.randn(2, 2), range_observer="max")  # type: ignore[arg-type]


@pytest.mark.zoo
def test_timm_efficientnet_int8_onnx_runs_integer_kernels_only(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1).eval()
    x = torch.randn(16, 3, 32, 32)
    sim = quantize(net, "int8-onnx", calibration=x, progress=False)
    r = export_onnx(
        sim, tmp_path / "effnet.onnx", x[:2], calibration=x, atol=1e3, min_agreement=0.0
    )
    n_conv = sum(isinstance(m, QuantLayer) and m.layer_kind == "conv2d" for m in sim.modules())
    assert r.int8_kernels.get("QLinearConv") == n_conv == 81
    model = onnx.load(str(r.path))
    assert not any(t.name.startswith("out_scale") for t in model.graph.initializer)
    # A projection feeding the next block's expansion directly is rounded once: a
    # DQ -> Q requantization there leaves both convolutions in float under ORT_ENABLE_ALL.
    prod = {o: n for n in model.graph.node for o in n.output}
    requantized = [
        n.name
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and n.input[0] in prod
        and prod[n.input[0]].op_type == "DequantizeLinear"
    ]
    assert requantized == []
