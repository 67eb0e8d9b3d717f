"""Packed weights made under ``torch.inference_mode()`` (by quantize or load) run like any other.

Tensors created in inference mode keep no version counter; the packed weight's
cache key read it, so the forward failed with "Inference tensors do not track
version counter".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dfcompress as dfc

X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()


@pytest.mark.parametrize("config", ["int8", "int4"])
def test_quantize_with_pack_inside_inference_mode(config: str) -> None:
    reference = dfc.quantize(_net(), config, calibration=X, pack=True, progress=False)
    with torch.no_grad():
        expected = reference(X)
    with torch.inference_mode():
        q = dfc.quantize(_net(), config, calibration=X, pack=True, progress=False)
        assert q[0].weight_packed is not None and q[0].weight_packed.is_inference()
        first = q(X)
        # inference mode may pick another float kernel: an activation lying on a
        # rounding boundary can move by one code, nothing more
        torch.testing.assert_close(first, expected, atol=1e-3, rtol=0)
        assert torch.equal(q(X), first)  # a second forward (the cached weight)
    with torch.no_grad():
        torch.testing.assert_close(q(X), expected, atol=1e-3, rtol=0)  # outside it too


def test_load_inside_inference_mode(tmp_path: Path) -> None:
    q = dfc.quantize(_net(), "int8", calibration=X, pack=True, progress=False)
    path = dfc.save(q, tmp_path / "q.safetensors")
    with torch.no_grad():
        expected = q(X)
    with torch.inference_mode():
        back = dfc.load(path)
        assert torch.equal(back(X), expected)
        assert torch.equal(back(X), expected)
        assert torch.equal(q(X), expected)  # a model made outside runs inside too
    with torch.no_grad():
        assert torch.equal(back(X), expected)
