"""int4-mixed: layers that cannot take 4 bits stay at 8, chosen by measured sensitivity."""

from __future__ import annotations

import torch
from torch import nn

from dfcompress.quant import quantize
from dfcompress.quant._mixed import layer_sensitivity, mixed_plan
from dfcompress.quant.modules import QuantLayer


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    with torch.no_grad():
        net[4].running_var.copy_(torch.logspace(-5, 0, 32))  # uneven depthwise channels
        net[10].weight[:, 0].mul_(30.0)  # an outlier per row: 4-bit groups lose the rest
    return net.eval()


def _bits(q: nn.Module) -> dict[str, int]:
    return {n: m.bits for n, m in q.named_modules() if isinstance(m, QuantLayer)}


def test_int4_mixed_keeps_the_most_sensitive_layers_at_8_bits_and_beats_int4() -> None:
    net, x = _net(), torch.randn(16, 3, 16, 16)
    scores = layer_sensitivity(net, x, ["0", "3", "6", "10"])
    mixed = quantize(net, "int4-mixed", calibration=x, progress=False)
    four = quantize(net, "int4", progress=False)
    bits = _bits(mixed)
    worst = max(scores, key=scores.__getitem__)
    assert worst == "10" and bits[worst] == 8
    assert 4 in bits.values()  # not everything fell back
    assert {n for n, b in bits.items() if b == 8} == mixed_plan(scores)
    with torch.no_grad():
        ref = net(x)
        assert float((mixed(x) - ref).pow(2).mean()) < float((four(x) - ref).pow(2).mean())


def test_mixed_plan_keeps_nothing_when_the_sum_is_within_budget() -> None:
    assert mixed_plan({"a": 0.001, "b": 0.002}, budget=0.01) == set()
    assert mixed_plan({"a": 0.02, "b": 0.002}, budget=0.01) == {"a"}
