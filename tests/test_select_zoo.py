"""SE branches of timm, torchvision and efficientnet_pytorch models are found by structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.select import find_se, select

pytestmark = pytest.mark.zoo

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _layers_inside(net: nn.Module, classes: tuple[type[nn.Module], ...]) -> set[str]:
    return {
        f"{name}.{child}"
        for name, block in net.named_modules()
        if isinstance(block, classes)
        for child, layer in block.named_modules()
        if child and isinstance(layer, _WEIGHTED)
    }


def _check(net: nn.Module, present: set[str], per_branch: int) -> None:
    assert present
    branches = find_se(net.eval())
    found = [name for b in branches for name in b.layers]
    assert set(found) == present  # every SE layer, nothing else, without the registry
    assert len(found) == len(present) == per_branch * len(branches)
    assert set(select(net, "se")) == present


@pytest.mark.parametrize(
    ("name", "per_branch"),
    [
        ("efficientnet_b0", 2),
        ("mobilenetv3_large_100", 2),
        ("ese_vovnet19b_dw", 1),
        ("ecaresnet26t", 1),
        ("regnety_002", 2),
    ],
)
def test_timm(name: str, per_branch: int) -> None:
    timm = pytest.importorskip("timm")
    from timm.layers import EcaModule, EffectiveSEModule, SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=2)
    classes = (EcaModule, EffectiveSEModule, SEModule, SqueezeExcite)
    _check(net, _layers_inside(net, classes), per_branch)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision(name: str) -> None:
    tv = pytest.importorskip("torchvision")
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(0)
    net = getattr(tv.models, name)(weights=None, num_classes=2)
    _check(net, _layers_inside(net, (SqueezeExcitation,)), 2)


def test_efficientnet_pytorch() -> None:
    ep = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    net = ep.EfficientNet.from_name("efficientnet-b0", num_classes=2)
    present = {n for n, _ in net.named_modules() if n.endswith(("._se_reduce", "._se_expand"))}
    _check(net, present, 2)
