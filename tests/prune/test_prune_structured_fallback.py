"""Structured pruning on graphs torch-pruning cannot follow everywhere."""

from __future__ import annotations

import pytest
import torch
from prune_nets import TinyResNet, n_params, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune.structured import prune_channels

__all__ = ["one_thread"]  # the autouse fixture applies to this module


class FixedSplit(nn.Module):
    """Two kernel sizes over fixed channel slices, as in MixNet's mixed convolution."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.splits = [channels // 2, channels - channels // 2]
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c)
            for c, k in zip(self.splits, (3, 5), strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], 1)


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mixed = FixedSplit(8)
        self.expand = nn.Conv2d(8, 32, 1)
        self.project = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(torch.relu(self.expand(self.mixed(torch.relu(self.stem(x))))))
        return self.fc(y.mean((2, 3)))


class StoredShapeScale(nn.Module):
    """A layer scale that reshapes its vector to a shape stored at construction (timm's Scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class ScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.ls = StoredShapeScale(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.ls(self.conv1(x))))
        return self.fc(y.mean((2, 3)))


def test_fixed_split_is_kept_whole_and_the_rest_pruned() -> None:
    torch.manual_seed(0)
    net = SplitNet().eval()
    x = torch.randn(2, 3, 8, 8)
    small = prune_channels(net, 0.5, example_inputs=x)
    assert small(x).shape == net(x).shape
    # the channels running through the split keep their count ...
    assert small.stem.out_channels == 8 and small.mixed.splits == [4, 4]
    # ... and the layers after it are still pruned
    assert small.expand.out_channels == 16
    assert n_params(small) < n_params(net)
    assert net.expand.out_channels == 32  # the caller's model is untouched


def test_fixed_split_inplace_prunes_the_model_itself() -> None:
    net = SplitNet().eval()
    x = torch.randn(2, 3, 8, 8)
    before = n_params(net)
    out = prune_channels(net, 0.5, example_inputs=x, inplace=True)
    assert out is net
    assert n_params(net) < before
    assert net(x).shape == (2, 1)


def test_layer_scale_with_stored_shape_follows_its_channels() -> None:
    torch.manual_seed(0)
    net = ScaleNet().eval()
    x = torch.randn(2, 3, 8, 8)
    small = prune_channels(net, 0.5, example_inputs=x)
    assert small.conv1.out_channels == 8
    assert small.ls.scale.shape == (8,) and small.ls.shape == (8, 1, 1)
    assert small(x).shape == (2, 1)


def test_a_group_that_cannot_be_scored_is_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_pruning as tp

    real = tp.importance.GroupMagnitudeImportance.__call__
    net = TinyResNet(width=16).eval()
    net.layer1.conv1.unscorable = True  # marks it in the copy that is pruned

    def flaky(self: object, group: object) -> torch.Tensor:
        deps = [dep for dep, _ in group]  # type: ignore[attr-defined]
        if any(getattr(d.target.module, "unscorable", False) for d in deps):
            raise IndexError("index 16 is out of bounds for dimension 0 with size 16")
        return real(self, group)  # type: ignore[arg-type]

    monkeypatch.setattr(tp.importance.GroupMagnitudeImportance, "__call__", flaky)
    x = torch.rand(2, 3, 16, 16)
    small = prune_channels(net, 0.5, example_inputs=x)
    # every group touching layer1.conv1 (its outputs, and the stem's channels it
    # reads) is kept whole; layer2's own channels are pruned
    assert small.layer1.conv1.out_channels == 16
    assert small.stem[0].out_channels == 16
    assert small.layer2.conv1.out_channels == 16  # 32 before
    assert n_params(small) < n_params(net)
    assert small(x).shape == net(x).shape


def test_nothing_prunable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_pruning as tp

    def broken(self: object, group: object) -> torch.Tensor:
        raise IndexError("index 4 is out of bounds for dimension 0 with size 4")

    monkeypatch.setattr(tp.importance.GroupMagnitudeImportance, "__call__", broken)
    with pytest.raises(DfcompressError, match=r"no channel of TinyResNet could be pruned"):
        prune_channels(TinyResNet(), 0.3, example_inputs=torch.rand(1, 3, 16, 16))


# timm architectures whose channel couplings torch-pruning does not follow alone:
# a split with a list of sizes, a layer scale with a stored shape, token mixing.
ZOO_CASES = {
    "mixnet_s": {},
    "poolformer_s12": {},
    "mixer_s16_224": {"img_size": 64},
}


@pytest.mark.zoo
@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_timm_graphs_with_tied_channels(name: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=1, **ZOO_CASES[name]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    small = prune_channels(net, 0.3, example_inputs=x)
    assert n_params(small) < 0.9 * n_params(net)
    with torch.no_grad():
        out = small(x)
    assert out.shape == ref.shape and bool(torch.isfinite(out).all())
