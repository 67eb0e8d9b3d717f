"""Bias correction: the mean output error of every quantized layer is removed when asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.quant import IntQuant, PerChannel, PerTensor, quantize


def _depthwise_net() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        net[0].weight.add_(0.3)  # filters with a mean: rounding shifts their output's mean
    return net.eval()


def _mean_shift(q: nn.Module, net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((q(x) - net(x)).mean((0, 2, 3)).abs().mean())


def test_bias_correction_halves_a_depthwise_mean_shift_and_is_on_by_default_there() -> None:
    net, x = _depthwise_net(), torch.randn(32, 8, 8, 8) + 1.0
    cfg = IntQuant(3, PerChannel(0))
    on = quantize(net, cfg, calibration=x, bias_correction=True, progress=False)
    off = quantize(net, cfg, calibration=x, bias_correction=False, progress=False)
    auto = quantize(net, cfg, calibration=x, progress=False)  # the default: None
    assert _mean_shift(on, net, x) < 0.5 * _mean_shift(off, net, x)
    with torch.no_grad():
        assert torch.equal(auto(x), on(x))
        # without data there is nothing to correct with: the same model as off
        bare = quantize(net, cfg, progress=False)
        assert torch.equal(bare(x), off(x))


def test_default_leaves_bias_correction_off_without_depthwise_layers_and_for_qat() -> None:
    torch.manual_seed(4)
    dense = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(32, 8, 8, 8) + 1.0
    cfg = IntQuant(3, PerChannel(0))
    with torch.no_grad():
        auto = quantize(dense, cfg, calibration=x, progress=False)(x)
        off = quantize(dense, cfg, calibration=x, bias_correction=False, progress=False)(x)
        on = quantize(dense, cfg, calibration=x, bias_correction=True, progress=False)(x)
    assert torch.equal(auto, off) and not torch.equal(auto, on)
    # quantization-aware training adjusts the biases itself: no correction before it
    net = _depthwise_net()

    def untouched(model: nn.Module, step: int) -> None:
        pass

    with torch.no_grad():
        qat = quantize(net, cfg, calibration=x, finetune=untouched, progress=False)(x)
        qat_off = quantize(
            net, cfg, calibration=x, finetune=untouched, bias_correction=False, progress=False
        )(x)
    assert torch.equal(qat, qat_off)


def test_bias_correction_removes_the_mean_error_of_rounded_inputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].weight.uniform_(0.5, 1.0)
    # inputs 0.35 of a step above a code: rounding always takes 0.35 of a step off
    x = (torch.randint(1, 14, (256, 16)).float() + 0.35) * 0.1
    x[:, 0], x[0, :] = 0.0, 1.5  # calibrated range [0, 1.5]: one 4-bit step is 0.1
    cfg = IntQuant(8, PerChannel(0), activations=IntQuant(4, PerTensor(), symmetric=False))
    shifts = []
    for bc in (False, True):
        q = quantize(net, cfg, calibration=x, bias_correction=bc, progress=False)
        with torch.no_grad():
            shifts.append(float((q(x) - net(x)).mean(0).abs().max()))
    assert shifts[0] > 0.3  # about 0.035 per input times 16 inputs times 0.75
    assert shifts[1] < 0.01 * shifts[0]


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_bias_correction_must_be_a_bool_or_none(bad: object) -> None:
    from dfcompress.errors import DfcompressError

    with pytest.raises(DfcompressError, match="bias_correction"):
        quantize(nn.Sequential(nn.Linear(2, 2)), "int8-weight", bias_correction=bad)  # type: ignore[arg-type]
