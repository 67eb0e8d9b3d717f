"""The scan's partial re-runs on timm models: exact, and cheaper than full forwards."""

from __future__ import annotations

import copy

import pytest
import torch

from dfcompress.prune import cosine_agreement, scan
from dfcompress.prune._targets import prunable_layers

pytestmark = pytest.mark.zoo


@pytest.mark.filterwarnings("ignore:pruning these layers")
@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "resnet18"])
def test_timm_scan_equals_full_forwards(name: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=1).eval()
    x = torch.randn(2, 3, 32, 32)
    res = scan(net, calibration=x, amounts=(0.5,), n_samples=2, progress=False, quick=False)
    assert res.full_pass_equivalent < 0.8 * res.forward_passes
    with torch.no_grad():
        ref = net(x)
        for ly in res.layers[:: max(1, len(res.layers) // 8)]:
            work = copy.deepcopy(net)
            w = prunable_layers(work)[ly.name].weight
            order = torch.sort(w.abs().flatten(), stable=True).indices
            flat = w.detach().flatten().clone()
            flat[order[: round(0.5 * w.numel())]] = 0
            w.copy_(flat.view_as(w))
            assert ly.scores == (cosine_agreement(work(x), ref),)
