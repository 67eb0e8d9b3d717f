"""Adaptive rounding: every layer's output error on the calibration data drops below nearest's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerChannel, PerGroup, quantize
from dfcompress.quant.modules import QuantLayer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def _inputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.__setitem__(n, a[0]))
        for n, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def _layer_errors(net: nn.Module, q: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each layer's output error, on the float model's input to it, from its weight alone."""
    layers = dict(q.named_modules())
    errors = {}
    for name, xin in _inputs(net, x).items():
        f, ql = net.get_submodule(name), layers[name]
        assert isinstance(ql, QuantLayer)
        with torch.no_grad():
            if isinstance(f, nn.Linear):
                out = F.linear(xin, ql.quantized_weight()) - F.linear(xin, f.weight)
            else:
                out = f._conv_forward(xin, ql.quantized_weight(), None) - f._conv_forward(
                    xin, f.weight, None
                )
        errors[name] = float(out.pow(2).mean())
    return errors


def test_adaptive_rounding_lowers_every_layers_output_error_at_4_bits() -> None:
    config = IntQuant(4, PerGroup(16, fallback=PerChannel(0)))
    net = _net()
    x = torch.randn(16, 3, 12, 12)
    nearest = quantize(net, config, progress=False)
    adaptive = quantize(net, config, calibration=x, rounding="adaptive", progress=False)
    near, ada = _layer_errors(net, nearest, x), _layer_errors(net, adaptive, x)
    assert set(near) == {"0", "2", "4", "7"}
    for name in near:
        assert ada[name] < near[name], (name, ada[name], near[name])


def test_adaptive_rounding_keeps_the_scales_and_packs() -> None:
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    cfg = IntQuant(4, PerGroup(16, fallback=PerChannel(0)))
    nearest = quantize(net, cfg, progress=False)
    adaptive = quantize(net, cfg, calibration=x, rounding="adaptive", progress=False, pack=True)
    for (_, a), (_, b) in zip(
        ((n, m) for n, m in nearest.named_modules() if isinstance(m, QuantLayer)),
        ((n, m) for n, m in adaptive.named_modules() if isinstance(m, QuantLayer)),
        strict=True,
    ):
        torch.testing.assert_close(b.weight_scale.float(), a.weight_scale.float())
        # codes differ from nearest's by at most one step
        assert int((b.int_weight().int() - a.int_weight().int()).abs().max()) <= 1


def test_adaptive_rounding_needs_data_and_a_known_mode() -> None:
    with pytest.raises(DfcompressError, match="rounding='adaptive' learns"):
        quantize(_net(), "int8-weight", rounding="adaptive", progress=False)
    with pytest.raises(DfcompressError, match="rounding='up' is unknown"):
        quantize(_net(), "int8-weight", rounding="up", progress=False)
