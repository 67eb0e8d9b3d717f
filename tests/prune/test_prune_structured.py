from __future__ import annotations

import pytest
import torch
from prune_nets import TinyMobileNet, TinyResNet, TinyViT, n_params, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune.structured import prune_channels


def _bnext() -> nn.Module:
    from dfcompress.models.bnext import BNext

    return BNext((16, 32, 32, 64), num_classes=1)


CASES = {
    "resnet": (lambda: TinyResNet(), (2, 3, 16, 16)),
    "mobilenet_se": (lambda: TinyMobileNet(), (2, 3, 16, 16)),
    "vit": (lambda: TinyViT(), (2, 3, 16, 16)),
    "bnext": (_bnext, (2, 3, 32, 32)),
}


@pytest.mark.parametrize(
    ("name", "importance"),
    [(n, "l1") for n in sorted(CASES)] + [("resnet", "taylor"), ("resnet", "l2")],
)
def test_structured_shrinks_and_runs(name: str, importance: str) -> None:
    build, shape = CASES[name]
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(shape)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ref = net(x)
    small = prune_channels(net, 0.5, example_inputs=x, importance=importance)  # type: ignore[arg-type]
    assert n_params(small) < 0.7 * n_params(net)
    # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    out = small(x)
    assert out.shape == ref.shape
    small.train()
    small(x).sum().backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)


def test_head_is_kept_and_selector_amounts() -> None:
    net = TinyResNet(width=16)
    x = torch.randn(2, 3, 16, 16)
    small = prune_channels(net, {"layer1.conv1": 0.5}, example_inputs=x)
    assert small.layer1.conv1.out_channels == 8
    assert small.layer2.conv1.out_channels == 32  # not selected: untouched
    assert small.fc.out_features == 1


def test_amount_and_importance_errors() -> None:
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(DfcompressError, match=r"1\.5"):
        prune_channels(TinyResNet(), 1.5, example_inputs=x)
    with pytest.raises(DfcompressError, match="'l3'"):
        prune_channels(TinyResNet(), 0.5, example_inputs=x, importance="l3")  # type: ignore[arg-type]


class HardCodedReshape(nn.Module):
    """A graph torch-pruning cannot follow: the channel count is baked into a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.classifier(y.reshape(y.shape[0], 128))


def test_unprunable_graph_names_the_layer() -> None:
    with pytest.raises(DfcompressError, match=r"after layer .conv."):
        prune_channels(HardCodedReshape(), 0.5, example_inputs=torch.randn(1, 3, 4, 4))


__all__ = ["one_thread"]  # the autouse fixture applies to this module
