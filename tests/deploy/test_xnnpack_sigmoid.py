"""SiLUs run in int8 in XNNPACK files: a fixed-range sigmoid table and an int8 product."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("executorch")

import dfcompress

G = torch.Generator().manual_seed(0)
CALIB = torch.randn(16, 3, 24, 24, generator=G)
TEST = torch.randn(32, 3, 24, 24, generator=G)


class _SiLUNet(nn.Module):
    """Conv, BatchNorm, SiLU; conv, SiLU; a squeeze-and-excitation gate; a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.se = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.bn1(self.conv1(x)))
        y = nn.functional.silu(self.conv2(y))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return self.fc(y.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _SiLUNet()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _sigmoid_ranges(model: nn.Module) -> list[tuple[float, int]]:
    q = torch.ops.quantized_decomposed.quantize_per_tensor.default  # registered by executorch
    graph = model.graph.graph  # type: ignore[union-attr]
    return [
        (float(n.args[1]), int(n.args[2]))
        for n in graph.nodes
        if n.target == q and n.args[0].target == torch.ops.aten.sigmoid.default
    ]


@pytest.mark.parametrize("qat", [False, True])
def test_silu_runs_as_an_int8_table_and_product(tmp_path: Path, qat: bool) -> None:
    finetune = (lambda model, step: None) if qat else None
    q = dfcompress.quantize(
        _net(), "int8", calibration=CALIB, target="xnnpack", progress=False, finetune=finetune
    )
    ranges = _sigmoid_ranges(q)
    # both SiLUs' sigmoids have XNNPACK's fixed table range; the SE gate has its own
    assert sorted(ranges).count((1.0 / 256.0, -128)) == 2
    assert len(ranges) == 3
    art = dfcompress.export(q, tmp_path / "silu.pte", TEST[:8], max_batch=32)
    with torch.no_grad():
        eager = q(TEST)
    got = art.run(TEST)
    assert (got.argmax(1) == eager.argmax(1)).all()
    torch.testing.assert_close(got, eager, atol=1e-3, rtol=0.0)


def test_silu_values_stay_close_to_float() -> None:
    # the table's 1/256 steps add little to the product's own int8 rounding
    net = _net()
    q = dfcompress.quantize(net, "int8", calibration=CALIB, target="xnnpack", progress=False)
    with torch.no_grad():
        f, e = net(TEST), q(TEST)
    assert ((e - f).norm() / f.norm()).item() < 0.05


def test_a_silu_after_a_float_layer_stays_float() -> None:
    q = dfcompress.quantize(
        _net(),
        "int8",
        calibration=CALIB,
        target="xnnpack",
        progress=False,
        select=lambda name, module: name != "conv1",
    )
    # conv1's output (and so the first SiLU) is float; the second SiLU is int8
    assert sorted(_sigmoid_ranges(q)).count((1.0 / 256.0, -128)) == 1
