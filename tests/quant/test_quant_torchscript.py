"""TorchScript files of int8 models reproduce the eager model (the export's own check)."""

from __future__ import annotations

from pathlib import Path

import torch
from _quant_nets import resnet34_like

from dfcompress.deploy import export_torchscript
from dfcompress.quant import quantize


def test_int8_resnet34_like_passes_the_torchscript_check(tmp_path: Path) -> None:
    net = resnet34_like(width=32)
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    q = quantize(net, "int8", calibration=x, progress=False, pack=True)
    r = export_torchscript(q, tmp_path / "q.pt", x[:8])  # default tolerances
    assert r.agreement == 1.0
    # The traced program rounds every activation where the eager model does.
    assert r.max_abs_diff == 0.0
