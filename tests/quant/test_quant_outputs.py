"""IntQuant(outputs=...): convolution outputs rounded as an int8 runtime stores them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _quant_nets import randomize_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.io import load, save
from dfcompress.quant import Quantizer, QuantLayer, quantize
from dfcompress.quant.config import (
    UINT8_ACTIVATIONS,
    UINT8_OUTPUTS,
    IntQuant,
    PerChannel,
    PerTensor,
    config_from_dict,
    config_to_dict,
    resolve_config,
)


class SiLUNet(nn.Module):
    """Conv-BN-SiLU twice, then a linear head: the shape of an EfficientNet stage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.bn1(self.conv1(x)))
        x = nn.functional.silu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(SiLUNet(), seed)


def _onnx_config() -> IntQuant:
    config = resolve_config("int8-onnx")
    assert isinstance(config, IntQuant)
    return config


def test_named_config_is_int8_with_uint8_outputs() -> None:
    config = _onnx_config()
    assert config.outputs == UINT8_OUTPUTS
    assert dataclasses.replace(config, outputs=None) == resolve_config("int8")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": UINT8_ACTIVATIONS}, "needs activations"),
        ({"activations": UINT8_ACTIVATIONS, "outputs": IntQuant(8, PerChannel(0))}, "PerTensor"),
        (
            {
                "activations": UINT8_ACTIVATIONS,
                "outputs": IntQuant(8, PerTensor(), observer="dynamic"),
            },
            "dynamic",
        ),
        ({"activations": UINT8_ACTIVATIONS, "outputs": "uint8"}, "must be an IntQuant"),
    ],
)
def test_bad_output_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        IntQuant(8, **kwargs)  # type: ignore[arg-type]


def test_config_dict_round_trip_and_unchanged_without_outputs() -> None:
    config = _onnx_config()
    assert config_from_dict(config_to_dict(config)) == config
    # Files written without the option carry no trace of it (identical to older files).
    assert "outputs" not in json.dumps(config_to_dict(resolve_config("int8")))


def test_conv_outputs_are_on_their_integer_grid() -> None:
    net = _net()
    x = torch.randn(16, 3, 8, 8)
    q = quantize(net, "int8-onnx", calibration=x, progress=False)
    convs = [m for m in q.modules() if isinstance(m, QuantLayer) and m.layer_kind == "conv2d"]
    assert len(convs) == 2
    outs: list[tuple[QuantLayer, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, a, y: outs.append((mod, y))) for m in convs]
    with torch.no_grad():
        q(torch.randn(4, 3, 8, 8) * 3)  # values past the calibrated range are clipped
    for h in handles:
        h.remove()
    for mod, y in outs:
        scale, zp = mod.output_scale, mod.output_zero_point
        assert scale is not None and zp is not None
        codes = y / scale + zp.float()
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert codes.min() >= -1e-3 and codes.max() <= 255 + 1e-3


def test_linear_layers_keep_float_outputs() -> None:
    q = quantize(_net(), "int8-onnx", calibration=torch.randn(8, 3, 8, 8), progress=False)
    fc = q.get_submodule("fc")
    assert isinstance(fc, QuantLayer) and fc.output_quant is None and fc.output_scale is None


def test_outputs_change_the_model_only_by_rounding() -> None:
    net = _net()
    x = torch.randn(32, 3, 8, 8)
    plain = quantize(net, "int8", calibration=x, progress=False)
    sim = quantize(net, "int8-onnx", calibration=x, progress=False)
    with torch.no_grad():
        ref, a, b = net(x), plain(x), sim(x)
    assert not torch.equal(a, b)  # the extra rounding is really there
    scale = float(ref.abs().max())
    assert float((b - ref).abs().max()) < 0.1 * scale


def test_convert_refuses_uncalibrated_outputs() -> None:
    qz = Quantizer([("all", "int8-onnx")])
    prepared = qz.prepare(_net())
    with pytest.raises(DfcompressError, match="quantizes its input"):
        qz.convert(prepared)
    for m in prepared.modules():
        if isinstance(m, QuantLayer) and m.input_quant is not None:
            m.input_quant.mode = "fixed"
    with pytest.raises(DfcompressError, match="quantizes its output"):
        qz.convert(prepared)


def test_save_load_round_trip(tmp_path: Path) -> None:
    net = _net()
    x = torch.randn(8, 3, 8, 8)
    q = quantize(net, "int8-onnx", calibration=x, progress=False, pack=True)
    f = save(q, tmp_path / "q.safetensors")
    back = load(f, factory=SiLUNet).eval()
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    conv = back.get_submodule("conv1")
    assert isinstance(conv, QuantLayer) and conv.output_quant is not None
    assert conv.output_quant.mode == "fixed"


def test_spec_without_outputs_is_unchanged() -> None:
    q = quantize(_net(), "int8", calibration=torch.randn(8, 3, 8, 8), progress=False)
    conv = q.get_submodule("conv1")
    assert isinstance(conv, QuantLayer)
    assert "output_mode" not in conv.dfc_spec()
    assert not any("output_quant" in k for k in q.state_dict())


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), gain=st.floats(0.1, 10.0))
def test_training_gradients_pass_through_the_output_rounding(seed: int, gain: float) -> None:
    net = _net(seed)
    torch.manual_seed(seed)
    x = torch.randn(8, 3, 8, 8) * gain
    q = quantize(net, "int8-onnx", calibration=x, progress=False)
    q.train()
    q(x).sum().backward()
    conv = q.get_submodule("conv1")
    assert isinstance(conv, QuantLayer) and conv.weight is not None
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
