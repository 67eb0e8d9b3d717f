"""16-bit cast layers: what they compute on CPU, and what their files hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfcompress import export, quantize
from dfcompress.quant.cast import CastConv2d, CastLinear


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_forward_rounds_to_16_bits_and_accumulates_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    c = CastConv2d.from_float(conv, dtype)
    x = torch.randn(2, 8, 10, 10)
    want = F.conv2d(
        x.to(dtype).float(), conv.weight.to(dtype).float(), conv.bias.to(dtype).float(), padding=1
    ).to(dtype)
    got = c(x)
    assert got.dtype == torch.float32 and torch.equal(got, want.float())
    # within 16-bit rounding of PyTorch's own 16-bit convolution
    native = F.conv2d(x.to(dtype), c.weight, c.bias, padding=1).float()
    eps = torch.finfo(dtype).eps
    assert torch.allclose(got, native, rtol=4 * eps, atol=4 * eps * float(native.abs().max()))


def test_linear_rounds_its_output_to_16_bits() -> None:
    torch.manual_seed(0)
    c = CastLinear.from_float(nn.Linear(32, 8), torch.float16)
    y = c(torch.randn(4, 32))
    assert torch.equal(y, y.half().float())


def test_traced_file_holds_16_bit_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3))
    x = torch.randn(2, 3, 12, 12)
    q16 = quantize(net, "fp16", progress=False)
    full = export(net, tmp_path / "f.pt", example=x, target="torchscript")
    half = export(q16, tmp_path / "h.pt", example=x, target="torchscript")
    assert half.size_bytes < 0.6 * full.size_bytes
    assert half.agreement is not None and half.agreement.max_abs_diff <= half.agreement.bound
