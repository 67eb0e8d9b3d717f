"""timm backbones (needs the zoo extra)."""

from __future__ import annotations

import pytest
import torch

from dfcompress.quant import QuantLayer, quantize

pytestmark = pytest.mark.zoo


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100"])
def test_timm_int8_keeps_outputs_close(name: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=2).eval()
    x = torch.randn(4, 3, 64, 64)
    q = quantize(net, "int8", calibration=x, progress=False)
    assert sum(isinstance(m, QuantLayer) for m in q.modules()) > 20
    se = [m for n, m in q.named_modules() if ".se." in n and isinstance(m, QuantLayer)]
    assert se, "SE convs are quantized too"
    with torch.no_grad():
        ref, out = net(x), q(x)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.2, rel


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100"])
def test_timm_batchnorm_act_layers_fold_and_keep_their_activation(name: str) -> None:
    timm = pytest.importorskip("timm")
    from torch import nn

    from dfcompress.quant import FoldedBatchNorm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64)
    q = quantize(net, "fp16", progress=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert any(isinstance(m, FoldedBatchNorm) and m.act is not None for m in q.modules())
    with torch.no_grad():
        ref, out = net(x), q(x)
    assert float((out - ref).norm() / ref.norm()) < 0.01
