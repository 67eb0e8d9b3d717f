from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.zoo

MODELS = {
    "efficientnet_b0": (1, 3, 64, 64),
    "legacy_xception": (1, 3, 71, 71),
    "mobilenetv3_small_100": (1, 3, 64, 64),
    "resnet18": (1, 3, 64, 64),
    "vit_tiny_patch16_224": (1, 3, 224, 224),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_structured_pruning(name: str) -> None:
    timm = pytest.importorskip("timm")
    from dfcompress.prune import prune_channels

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=1).eval()
    x = torch.randn(MODELS[name])
    ref = net(x)
    small = prune_channels(net, 0.3, example_inputs=x)
    before = sum(p.numel() for p in net.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after < 0.85 * before
    assert small(x).shape == ref.shape
    small.train()
    small(torch.cat([x, x])).sum().backward()
