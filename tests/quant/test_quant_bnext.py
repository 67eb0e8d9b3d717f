"""I-SE-O mixed precision on BNext: the stem, SE convs and head are found and quantized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.presets import ise
from dfcompress.quant import QuantLayer, quantize

models = pytest.importorskip("dfcompress.models")


def _check(variant: str, bits: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = models.bnext(variant, num_classes=1).eval()
    x = torch.randn(2, 3, 32, 32)
    q = quantize(net, ise(*bits), calibration=x, progress=False)
    se_layers = [m for n, m in q.named_modules() if n.endswith(".se.reduce")]
    assert se_layers
    i, se, o = bits
    assert isinstance(q.stem_conv, QuantLayer) and q.stem_conv.bits == i
    assert isinstance(q.fc, QuantLayer) and q.fc.bits == o
    if se == 32:
        assert all(type(m) is nn.Conv2d for m in se_layers)
    else:
        assert all(isinstance(m, QuantLayer) and m.bits == se for m in se_layers)
    # binary convolutions are not conv/linear layers and stay as they are
    assert all(
        type(m).__name__ != "QuantConv2d" for m in q.modules() if isinstance(m, models.BinaryConv2d)
    )
    with torch.no_grad():
        ref, out = net(x), q(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 1e-3


def test_bnext_tiny_ise_8_4_8() -> None:
    _check("tiny", (8, 4, 8))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "small", "middle", "large"])
@pytest.mark.parametrize("bits", [(8, 32, 8), (8, 8, 8)])
def test_bnext_all_variants(variant: str, bits: tuple[int, int, int]) -> None:
    _check(variant, bits)
