"""Adaptive rounding: every layer's output error on the calibration data drops below nearest's."""

from __future__ import annotations

import pytest
import torch
from _quant_nets import dw_net, layer_weight_errors

from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerChannel, PerGroup, quantize
from dfcompress.quant.modules import QuantLayer


def test_adaptive_rounding_lowers_every_layers_output_error_at_4_bits() -> None:
    config = IntQuant(4, PerGroup(16, fallback=PerChannel(0)))
    net = dw_net()
    x = torch.randn(16, 3, 12, 12)
    nearest = quantize(net, config, progress=False)
    adaptive = quantize(net, config, calibration=x, rounding="adaptive", progress=False)
    near, ada = layer_weight_errors(net, nearest, x), layer_weight_errors(net, adaptive, x)
    assert set(near) == {"0", "2", "4", "7"}
    for name in near:
        assert ada[name] < near[name], (name, ada[name], near[name])


def test_adaptive_rounding_keeps_the_scales_and_packs() -> None:
    net = dw_net()
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
    with pytest.raises(DfcompressError, match="rounding='adaptive' chooses"):
        quantize(dw_net(), "int8-weight", rounding="adaptive", progress=False)
    with pytest.raises(DfcompressError, match="rounding='up' is unknown"):
        quantize(dw_net(), "int8-weight", rounding="up", progress=False)
