"""Sensitivity allocation never does worse than plain global L1, judged on every output."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from dfcompress.prune import prune, sparsity
from dfcompress.prune.api import held_out_score


class TwoHeads(nn.Module):
    """A trunk with a large regression output first and a small decision head second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
        self.boxes = nn.Linear(16 * 6 * 6, 64)
        self.prob = nn.Linear(16 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.trunk(x)).flatten(1)
        return self.boxes(h) * 10, self.prob(h)


def test_score_sees_every_output() -> None:
    net = TwoHeads().eval()
    broken = TwoHeads().eval()
    with torch.no_grad():
        broken.prob.weight.neg_()
        broken.prob.bias.neg_()
    x = torch.randn(8, 3, 8, 8)
    assert held_out_score(net, net, x) == pytest.approx(1.0)
    # the first output is untouched; the second now points the other way
    assert held_out_score(net, broken, x) < 0


def test_sensitivity_keeps_the_better_of_allocation_and_global(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = TwoHeads().eval()
    calib = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    held_out = calib[32:]
    with caplog.at_level(logging.INFO, logger="dfcompress"):
        chosen = prune(net, 0.7, sensitivity=True, calibration=calib, progress=False)
    plain = prune(net, 0.7, calibration=calib, progress=False)
    assert sparsity(chosen) == pytest.approx(0.7, abs=1e-3)
    assert held_out_score(net, chosen, held_out) >= held_out_score(net, plain, held_out)
    assert "pruning kept the" in caplog.text and "global L1" in caplog.text
    assert not bool((net.prob.weight == 0).any())  # the caller's model is untouched


def test_inplace_sensitivity_prunes_the_given_model() -> None:
    net = TwoHeads().eval()
    out = prune(
        net,
        0.5,
        sensitivity=True,
        calibration=torch.randn(40, 3, 8, 8),
        inplace=True,
        progress=False,
    )
    assert out is net and sparsity(net) == pytest.approx(0.5, abs=1e-3)
