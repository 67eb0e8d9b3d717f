"""Structured pruning where channels are permuted (channels-last) before a flatten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune.structured import prune_channels


class ChannelsLastHead(nn.Module):
    """conv -> conv -> channels-last tokens flattened into a Linear."""

    def __init__(self, first: bool = True) -> None:
        super().__init__()
        self.first = first
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = torch.relu(self.conv1(x))
        y = self.conv2(x).permute(0, 2, 3, 1).flatten(1)
        return self.fc(y)


class OnlyChannelsLast(ChannelsLastHead):
    def __init__(self) -> None:
        super().__init__()
        del self.conv1
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(x).permute(0, 2, 3, 1).flatten(1))


def test_channels_last_flatten_is_refused_naming_the_layer() -> None:
    torch.manual_seed(0)
    with pytest.raises(DfcompressError, match=r"'conv2' are permuted before a flatten"):
        prune_channels(OnlyChannelsLast().eval(), 0.5, example_inputs=torch.randn(2, 3, 4, 4))


def test_channels_before_the_permute_are_pruned_and_the_output_stays_right() -> None:
    torch.manual_seed(0)
    net = ChannelsLastHead().eval()
    x = torch.randn(4, 3, 4, 4)
    small = prune_channels(net, 0.5, example_inputs=x)
    assert small.conv1.out_channels == 4
    # the permuted channels are kept: removing them would cut the wrong Linear inputs
    assert small.conv2.out_channels == 8
    assert small.fc.in_features == 8 * 4 * 4
    # the pruned model computes exactly the original with the removed channels zeroed
    kept = [
        i for i in range(8) if any(torch.equal(net.conv1.weight[i], w) for w in small.conv1.weight)
    ]
    assert len(kept) == 4
    masked = ChannelsLastHead().eval()
    masked.load_state_dict(net.state_dict())
    with torch.no_grad():
        drop = [i for i in range(8) if i not in kept]
        masked.conv1.weight[drop] = 0
        masked.conv1.bias[drop] = 0
        torch.testing.assert_close(small(x), masked(x))
