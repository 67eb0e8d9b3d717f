"""The quick sensitivity scan: BatchNorm folded, clearly free and harmful layers cut short."""

from __future__ import annotations

import warnings

import pytest
import torch
from prune_nets import TinyResNet
from torch import nn

from dfcompress.prune import allocate, scan


class FreeAndHarmful(nn.Module):
    """``dead`` adds nothing to the output; ``gate`` scales it, so pruning it flips it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.mid = nn.Linear(32, 32)
        self.dead = nn.Linear(32, 32)
        self.gate = nn.Linear(32, 1)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        h = torch.relu(self.mid(h)) + 0.0 * self.dead(h)
        return self.head(h) * torch.tanh(self.gate(h))


def _trained_bn(net: nn.Module, x: torch.Tensor) -> nn.Module:
    net.train()
    with torch.no_grad():
        net(x)  # BatchNorm statistics that are not the identity
        net.eval()
        if isinstance(net, FreeAndHarmful):
            # equal weights summing to about 1.1x the bias: pruning 30 % of them flips the gate
            h = torch.relu(net.mid(net.body(x)))
            net.gate.weight.fill_(1.0)
            net.gate.bias.fill_(-0.9 * float(h.sum(1).mean()))
    return net


@pytest.mark.parametrize("net_x", ["resnet", "free_and_harmful"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_quick_scan_allocates_what_the_full_scan_does(net_x: str, target: float) -> None:
    gen = torch.Generator().manual_seed(1)
    if net_x == "resnet":
        x = torch.randn(8, 3, 8, 8, generator=gen)
        net = _trained_bn(TinyResNet(), x)
    else:
        x = torch.randn(32, 16, generator=gen)
        net = _trained_bn(FreeAndHarmful(), x)
    kw = {"calibration": x, "amounts": (0.1, 0.3, 0.5, 0.7, 0.9), "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dead layer's "no effect" warning
        slow = scan(net, quick=False, **kw)  # type: ignore[arg-type]
        fast = scan(net, quick=True, **kw)  # type: ignore[arg-type]
    a, b = allocate(slow, target).amounts, allocate(fast, target).amounts
    assert a.keys() == b.keys()
    for name in a:
        assert b[name] == pytest.approx(a[name], abs=1e-6), name
    # every measured score is the full scan's (BatchNorm folded: equal to rounding)
    for s, f in zip(slow.layers, fast.layers, strict=True):
        measured = dict(zip(s.amounts, s.scores, strict=True))
        for amount, score in zip(f.amounts, f.scores, strict=True):
            if amount not in f.estimated:
                assert score == pytest.approx(measured[amount], abs=1e-5)


def test_free_and_harmful_layers_cost_fewer_passes() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 16, generator=gen)
    net = _trained_bn(FreeAndHarmful(), x)
    grid = (0.1, 0.3, 0.5, 0.7, 0.9)
    with pytest.warns(UserWarning, match="dead"):
        slow = scan(net, calibration=x, amounts=grid, progress=False, quick=False)
    with pytest.warns(UserWarning, match="dead"):
        fast = scan(net, calibration=x, amounts=grid, progress=False, quick=True)
    by_name = {ly.name: ly for ly in fast.layers}
    # the dead layer: one pass at 0.9, the smaller amounts take its score
    assert by_name["dead"].estimated == grid[:-1]
    assert by_name["dead"].flag == "no effect"
    # the gate flips the output early: the amounts past that are interpolated
    gate = by_name["gate"]
    assert gate.estimated and gate.estimated[-1] == 0.7
    assert list(gate.scores) == sorted(gate.scores, reverse=True)
    assert fast.forward_passes < slow.forward_passes
    # the full scan measures everything
    assert all(not ly.estimated for ly in slow.layers)
