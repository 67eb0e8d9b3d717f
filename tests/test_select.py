"""Module selection on nets shaped like the real ones (timm / torchvision SE blocks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress import DfcompressError
from dfcompress.select import as_selector, by_name, by_type, preset, register_se, select, where


class SEModule(nn.Module):
    """Shaped like timm's SEModule (fc1/fc2 1x1 convs)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


# Pretend these classes live where timm / torchvision define theirs.
SEModule.__module__ = "timm.layers.squeeze_excite"


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, 2, 1)
        self.fc2 = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.avgpool(x)))))


SqueezeExcitation.__module__ = "torchvision.ops.misc"


class Block(nn.Module):
    def __init__(self, c: int, se: nn.Module) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.se = se
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Sequential(Block(8, SEModule(8)), nn.Sequential(Block(8, SqueezeExcitation(8)))),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
        nn.Linear(8, 2),
    )


def test_presets_on_nested_net() -> None:
    net = make_net()
    assert select(net, "stem") == {"0": net[0]}
    assert list(select(net, "head")) == ["6"]
    assert list(select(net, "linear")) == ["5", "6"]
    assert list(select(net, "bn")) == ["1"]
    se = list(select(net, "se"))
    assert se == ["2.0.se.fc1", "2.0.se.fc2", "2.1.0.se.fc1", "2.1.0.se.fc2"]
    convs = select(net, "conv")
    assert len(convs) == 1 + 2 * 4
    assert set(se) <= set(convs)


def test_combinators() -> None:
    net = make_net()
    non_se_convs = select(net, preset("conv") & ~preset("se") & ~preset("stem"))
    assert list(non_se_convs) == ["2.0.dw", "2.0.pw", "2.1.0.dw", "2.1.0.pw"]
    union = select(net, preset("stem") | "head")
    assert list(union) == ["0", "6"]
    assert list(select(net, by_name("2.*.dw"))) == ["2.0.dw", "2.1.0.dw"]
    assert list(select(net, by_type(nn.BatchNorm2d))) == ["1"]
    depthwise = where(lambda _n, m: isinstance(m, nn.Conv2d) and m.groups > 1)
    assert list(select(net, depthwise)) == ["2.0.dw", "2.1.0.dw"]
    assert list(select(net, ["stem", "head"])) == ["0", "6"]


def test_register_se_extends_the_preset() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 1, 1)
            self.b = nn.Conv2d(1, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))  # no pooling, no gate: not found by structure

    net = nn.Sequential(nn.Conv2d(3, 4, 1), Gate())
    assert select(net, "se") == {}
    register_se(Gate)
    assert list(select(net, "se")) == ["1.a", "1.b"]


def test_errors_name_the_bad_value() -> None:
    net = make_net()
    with pytest.raises(DfcompressError, match=r"'convs'.*conv"):
        select(net, "convs")
    with pytest.raises(DfcompressError, match="matched no module"):
        select(net, by_name("nothing.*"), required=True)
    with pytest.raises(DfcompressError, match="42"):
        as_selector(42)  # type: ignore[arg-type]
    with pytest.raises(DfcompressError):
        by_type(int)  # type: ignore[arg-type]
    with pytest.raises(DfcompressError):
        register_se(int)  # type: ignore[arg-type]


def test_selection_does_not_touch_the_model() -> None:
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    select(net, preset("se") | "stem" | "head")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
