"""Weight scales: each row's largest weight is a code, not clipped half a step towards zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.quant import IntQuant, PerChannel, PerGroup, Quantizer, quantize
from dfcompress.quant.modules import QuantLayer


def _layers(q: nn.Module) -> list[QuantLayer]:
    return [m for m in q.modules() if isinstance(m, QuantLayer)]


@pytest.mark.parametrize("bits", [8, 4])
def test_the_largest_weight_of_every_row_is_reproduced(bits: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 8, 1)).eval()
    q = quantize(net, IntQuant(bits, PerChannel(0)), progress=False)
    for float_layer, layer in zip(net, _layers(q), strict=True):
        w = float_layer.weight.detach().reshape(float_layer.weight.shape[0], -1)
        wq = layer.quantized_weight().detach().reshape(w.shape)
        row = w.abs().argmax(dim=1, keepdim=True)
        # float16-rounded scales: within 2**-11 of the float weight
        torch.testing.assert_close(wq.gather(1, row), w.gather(1, row), rtol=2**-11, atol=0)
        assert int(layer.int_weight().abs().amax()) == 2 ** (bits - 1) - 1


def test_int8_codes_equal_torchs_per_channel_fake_quantize_with_absmax_over_127() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1)).eval()
    q = quantize(net, "int8-weight", progress=False)
    for float_layer, layer in zip(net, _layers(q), strict=True):
        w = float_layer.weight.detach()
        scale = layer.weight_scale.float()
        ref_scale = w.abs().reshape(w.shape[0], -1).amax(1) / 127
        torch.testing.assert_close(scale, ref_scale, rtol=2**-11, atol=0)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        ref = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
        assert torch.equal(layer.quantized_weight().detach(), ref)


def test_a_dominant_depthwise_tap_keeps_the_filter_gain_at_4_bits() -> None:
    # A filter of one tap (a depthwise filter dominated by its centre): at half the
    # code range (7.5) that tap was clipped to 7 codes, shrinking the response by 1/15.
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[:, :, 1, 1] = 1.0
    x = torch.ones(2, 4, 6, 6)
    q = quantize(net, IntQuant(4, PerGroup(32, fallback=PerChannel(0))), progress=False)
    with torch.no_grad():
        gain = float((q(x)[..., 1:-1, 1:-1] / net(x)[..., 1:-1, 1:-1]).mean())
    assert abs(gain - 1.0) < 0.01


def test_layers_prepared_for_training_keep_half_the_code_range() -> None:
    # Trained weights follow their scale: the clipped largest weights get no
    # gradient there, which keeps that scale steady during fine-tuning.
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1)).eval()
    prepared = Quantizer([("all", "int8-weight")], qat=True).prepare(net)
    for float_layer, layer in zip(net, _layers(prepared), strict=True):
        w = float_layer.weight.detach()
        half = w.abs().reshape(w.shape[0], -1).amax(1) / 127.5
        layer.quantized_weight()  # the scale follows the weight
        torch.testing.assert_close(layer.weight_scale.float(), half, rtol=2**-11, atol=0)
