"""Quantized models through dfcompress.save / load: file size and exact round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dfcompress.io import load, save
from dfcompress.quant import QuantLayer, quantize


class WideNet(nn.Module):
    """Big enough (2.4 MB in float32) that the file header is under 1 %."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 512, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(512)
        self.fc1 = nn.Linear(512, 512)
        self.fc2 = nn.Linear(512, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize(
    ("config", "max_ratio"), [("int8", 0.26), ("int4", 0.15), ("fp16", 0.51), ("bf16", 0.51)]
)
def test_saved_file_shrinks_and_loads_back_exactly(
    tmp_path: Path, config: str, max_ratio: float
) -> None:
    torch.manual_seed(0)
    net = WideNet().eval()
    x = torch.randn(4, 3, 8, 8)
    q = quantize(net, config, calibration=x, pack=True, progress=False)
    f_float = save(net, tmp_path / "float.safetensors")
    f_q = save(q, tmp_path / "q.safetensors")
    ratio = f_q.stat().st_size / f_float.stat().st_size
    assert ratio <= max_ratio, ratio
    back = load(f_q, factory=WideNet).eval()
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    if config.startswith("int"):
        assert all(m.weight_packed is not None for m in back.modules() if isinstance(m, QuantLayer))
