"""BatchNorm folding finds the conv each BatchNorm reads, also in models fx cannot trace."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfcompress.quant._bnfold import find_conv_bn_pairs


class Untraceable(nn.Module):
    """A data-dependent branch (no fx graph); BatchNorms reading temporaries and convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bns = nn.ModuleList([nn.BatchNorm2d(4) for _ in range(4)])
        self.convs = nn.ModuleList([nn.Conv2d(4, 4, 1) for _ in range(4)])

    def forward(self, x: Tensor) -> Tensor:
        if float(x.sum()) > -1e9:  # fx cannot trace this
            x = self.bn0(self.conv0(x))
        for bn, conv in zip(self.bns, self.convs, strict=True):
            # the BatchNorm's input is a temporary, freed before the conv runs: the
            # conv's output may be given the freed tensor's id
            x = conv(bn(x * 1.5))
        return x


def test_probe_pairs_match_tensors_not_reused_ids() -> None:
    torch.manual_seed(0)
    net = Untraceable().eval()
    for _ in range(5):
        assert find_conv_bn_pairs(net) == [("conv0", "bn0")]
