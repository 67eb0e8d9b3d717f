"""I-SE-O rules: what each part matched, and a warning when a part matched nothing."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from dfcompress import compress
from dfcompress.presets import IseMatch, ise
from dfcompress.quant import QuantLayer, quantize
from dfcompress.select import SelectionWarning


class Recalibrate(nn.Module):
    """An SE branch under names no registry knows."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.shrink = nn.Conv2d(c, 4, 1)
        self.grow = nn.Conv2d(4, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = self.grow(torch.relu(self.shrink(torch.mean(x, dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(w)


def make_net(se: bool = True) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        Recalibrate(16) if se else nn.Identity(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def test_ise_quantizes_structurally_found_se_and_reports_counts() -> None:
    torch.manual_seed(0)
    net = make_net().eval()
    rules = ise(8, 4, 8)
    assert rules.matched is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize(net, rules, calibration=torch.randn(4, 3, 16, 16), progress=False)
    assert rules.matched == IseMatch("Sequential", stem=1, se=2, head=1)
    assert isinstance(q[2].shrink, QuantLayer) and q[2].shrink.bits == 4
    assert isinstance(q[2].grow, QuantLayer) and q[2].grow.bits == 4
    assert isinstance(q[0], QuantLayer) and q[0].bits == 8
    assert type(q[3]) is nn.Conv2d  # not a part of I-SE-O


def test_a_part_that_matches_nothing_is_reported() -> None:
    net = make_net(se=False)
    with pytest.warns(SelectionWarning, match=r"ise\(8, 4, 8\): part SE .* of Sequential"):
        assert ise(8, 4, 8).match(net) == IseMatch("Sequential", stem=1, se=0, head=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ise(8, 32, 8).match(net).se == 0  # left float: nothing is lost


def test_the_recipe_token_warns_too() -> None:
    with pytest.warns(SelectionWarning, match="part SE"):
        compress(make_net(se=False), "ise8-4-8", torch.randn(4, 3, 16, 16), progress=False)


def test_example_reaches_the_se_part() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = make_net()
            self.check = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.shape[-1] != 12:
                raise ValueError(f"expects 12x12 crops, got {list(x.shape)}")
            return self.check(self.body(x))

    with pytest.warns(SelectionWarning) as record:
        assert ise(8, 4, 8).match(Fixed()).se == 0
    said = " | ".join(str(w.message) for w in record)
    assert "expects 12x12 crops, got [2, 3, 64, 64]" in said and "part SE" in said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ise(8, 4, 8, example=(1, 3, 12, 12)).match(Fixed()).se == 2
