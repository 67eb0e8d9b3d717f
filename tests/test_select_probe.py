"""The "se" selector's probe forward: the model is left as it was, failures fall back."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from _se_nets import Squash, torch_mean
from dfcompress import DfcompressError
from dfcompress.models import BNext
from dfcompress.select import SelectionWarning, find_se, preset, register_se, select


class ClampsInPlace(nn.Module):
    """A forward that writes a parameter and a buffer in place, as some published models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1, 16, 1, 1), 2.0))
        self.se = Squash(16, torch_mean, nn.ReLU(), torch.sigmoid)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: Tensor) -> Tensor:
        self.scale.data.clamp_(0, 1)
        self.bn.running_mean[0] = 7.0
        return self.bn(self.se(self.conv(x) * self.scale))


def test_selection_leaves_the_model_as_it_was() -> None:
    net = ClampsInPlace()
    net.train()
    net.se.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert list(select(net, "se")) == ["se.alpha", "se.beta"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and net.bn.training and not net.se.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_untraceable_model_falls_back_to_the_registry_with_a_warning() -> None:
    @register_se
    class Registered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.a(x)

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.reg = Registered()
            self.se = Squash(8, torch_mean, nn.ReLU(), torch.sigmoid)

        def forward(self, x: Tensor, mask: Tensor) -> Tensor:
            return self.se(self.reg(self.stem(x))) * mask

    net = TwoInputs()
    with pytest.warns(SelectionWarning, match=r"could not trace TwoInputs.*TypeError.*mask"):
        assert list(select(net, "se")) == ["reg.a"]
    with pytest.raises(DfcompressError, match="cannot trace TwoInputs"):
        find_se(net)


def test_example_input_is_used_when_the_guess_does_not_fit() -> None:
    class NeedsSize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.se = Squash(16, torch_mean, nn.ReLU(), torch.sigmoid)
            self.fc = nn.Linear(16 * 20 * 20, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.se(self.stem(x)).flatten(1))

    net = NeedsSize()
    with pytest.warns(SelectionWarning, match=r"\[2, 3, 64, 64\].*224, 224\].*256, 256\]"):
        assert select(net, "se") == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_shape = select(net, preset("se", example=(1, 3, 20, 20)))
        by_tensor = select(net, preset("se", example=torch.randn(1, 3, 20, 20)))
    assert list(by_shape) == list(by_tensor) == ["se.alpha", "se.beta"]


@pytest.mark.parametrize(
    ("name", "example", "match"),
    [
        ("conv", (1, 3, 8, 8), "only used by preset"),
        ("se", (1, 0, 8), r"example=\(1, 0, 8\)"),
        ("se", [1, 3, 8, 8], r"example=\[1, 3, 8, 8\]"),
    ],
)
def test_bad_example_is_an_error(name: str, example: object, match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        preset(name, example=example)  # type: ignore[arg-type]


def test_a_model_without_se_selects_nothing_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select(BNext((8, 8), num_classes=2), "conv")
        assert select(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "se") == {}
        assert select(nn.Sequential(nn.ReLU()), "se") == {}
