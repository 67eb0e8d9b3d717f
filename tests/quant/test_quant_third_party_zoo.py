"""efficientnet_pytorch and torchvision models through quantize and prune (the zoo extra)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import dfcompress as dfc
from dfcompress.prune import sparsity

pytestmark = pytest.mark.zoo


def _efficientnet_b0() -> nn.Module:
    ep: Any = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    net: nn.Module = ep.EfficientNet.from_name("efficientnet-b0", num_classes=1)
    return net.eval()


def _mobilenet_v3() -> nn.Module:
    tv: Any = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net: nn.Module = tv.models.mobilenet_v3_small(weights=None, num_classes=1)
    return net.eval()


BUILDERS = {"efficientnet_pytorch b0": _efficientnet_b0, "torchvision mobilenet_v3": _mobilenet_v3}


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("config", ["int8", "int4"])
def test_quantize_covers_the_conv_and_linear_layers(name: str, config: str) -> None:
    net = BUILDERS[name]()
    x = torch.randn(8, 3, 64, 64)
    q = dfc.quantize(net, config, calibration=x, progress=False)
    s = dfc.summary(q)
    rows = list(s)
    # efficientnet_pytorch's convs are Conv2d subclasses with their own (same-padding) forward
    assert sum(r.action == config for r in rows) >= 0.95 * len(rows), s.to_markdown()
    assert all(r.reason is not None for r in s if r.action == "float")
    with torch.no_grad():
        ref, out = net(x), q(x)
    assert out.shape == ref.shape and bool(torch.isfinite(out).all())
    if config == "int8" and name.startswith("efficientnet"):
        # (random-init torchvision MobileNetV3 outputs ~1e-10: nothing to compare)
        assert float((out - ref).norm() / ref.norm()) < 0.2


@pytest.mark.parametrize("name", list(BUILDERS))
def test_l1_prune_reaches_half(name: str) -> None:
    net = BUILDERS[name]()
    p = dfc.prune(net, 0.5, progress=False)
    assert sparsity(p) == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        assert p(torch.randn(2, 3, 64, 64)).shape == (2, 1)
