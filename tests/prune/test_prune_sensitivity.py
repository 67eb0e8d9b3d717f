from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import TinyResNet, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import Pruner, allocate, scan, sparsity
from dfcompress.prune._allocate import allocate_budget


class TwoBranch(nn.Module):
    """``critical`` carries the signal; ``redundant`` adds almost nothing to the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.critical = nn.Linear(16, 16)
        self.redundant = nn.Linear(16, 16)
        self.unused = nn.Linear(16, 16)
        self.head = nn.Linear(16, 1)
        with torch.no_grad():
            self.redundant.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.critical(x)) + torch.relu(self.redundant(x)))


def test_redundant_layer_gets_more_than_critical_and_forwards_are_counted() -> None:
    net = TwoBranch()
    calls = []
    grid = (0.25, 0.5, 0.75, 0.9)
    with pytest.warns(UserWarning, match="unused"):
        res = scan(
            net,
            calibration=torch.randn(24, 16),
            amounts=grid,
            select=["critical", "redundant", "unused"],
            progress=False,
        )
    net.register_forward_hook(lambda *_: calls.append(1))
    assert res.flagged == ["unused"]
    # one checked reference pass and one pass per (layer, amount) of the layers on the
    # forward path: no full evaluation loops, nothing run for the unused layer
    assert res.forward_passes == 1 + 2 * len(grid)
    out = allocate(res, 0.5)
    assert out.amounts["redundant"] > out.amounts["critical"]
    assert out.achieved == pytest.approx(0.5, abs=1 / 768)
    assert not calls  # the scan ran on a copy


def test_scan_counts_its_passes_and_reruns_less_than_full_forwards() -> None:
    net = TinyResNet()
    res = scan(net, calibration=torch.randn(4, 3, 8, 8), amounts=(0.5,), progress=False)
    assert res.forward_passes == 1 + len(res.layers)
    # only the part of the graph downstream of each layer is re-run
    assert res.full_pass_equivalent < res.forward_passes - 1


def test_whole_output_scoring_sees_residual_coupled_layers() -> None:
    # layer1.conv2 sits before a skip connection: judged by the network output it is not free
    net = TinyResNet().eval()
    res = scan(net, calibration=torch.randn(8, 3, 8, 8), amounts=(0.9,), progress=False)
    by = {ly.name: ly for ly in res.layers}
    # measurably below the baseline: ten times the scan's own "no effect" threshold (1e-6);
    # over 20 random initialisations the smallest drop was 2.8e-5
    assert by["layer1.conv2"].scores[0] < res.baseline - 1e-5
    assert not res.flagged


@settings(max_examples=40, deadline=None)
@given(
    params=st.lists(st.integers(1, 500), min_size=1, max_size=6),
    target=st.floats(0.0, 0.85),
    seed=st.integers(0, 1000),
)
def test_budget_allocation_meets_the_target_to_one_weight(
    params: list[int], target: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    grid = [0.1 * i for i in range(1, 10)]
    losses = [sorted(torch.rand(len(grid), generator=g).tolist()) for _ in params]
    amounts = allocate_budget(params, grid, losses, target)
    pruned = sum(round(a * n) for a, n in zip(amounts, params, strict=True))
    assert pruned == round(target * sum(params))
    assert all(0 <= round(a * n) <= round(0.9 * n) for a, n in zip(amounts, params, strict=True))


def test_threshold_strategy_and_unreachable_target() -> None:
    res = scan(
        TwoBranch(),
        calibration=torch.randn(16, 16),
        progress=False,
        select=["critical", "redundant"],
    )
    thr = allocate(res, 0.5, strategy="threshold", base=0.2, threshold=0.999)
    assert thr.amounts["critical"] >= 0.2
    assert thr.amounts["redundant"] >= thr.amounts["critical"]
    with pytest.raises(DfcompressError, match=r"0\.95"):
        allocate(res, 0.95)
    with pytest.raises(DfcompressError, match="'greedy'"):
        allocate(res, 0.5, strategy="greedy")  # type: ignore[arg-type]


def test_result_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = allocate(
        scan(TinyResNet(), calibration=torch.randn(4, 3, 8, 8), amounts=(0.5, 0.9), progress=False),
        0.5,
    )
    md = res.to_markdown()
    assert "layer1.conv1" in md and "score@0.5" in md
    assert {"layer", "params", "chosen"} <= set(res.rows[0])
    png = res.plot(tmp_path / "sens.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_data_free_sensitivity_prunes_to_target() -> None:
    net = TinyResNet().eval()
    pruner = Pruner(amount=0.5, sensitivity=True, grid=(0.3, 0.6, 0.9), n_samples=4)
    small = pruner.apply(net, progress=False, example_inputs=torch.randn(1, 3, 8, 8))
    assert sparsity(small) == pytest.approx(0.5, abs=1e-3)
    assert pruner.last_sensitivity is not None
    assert pruner.last_sensitivity.achieved == pytest.approx(0.5, abs=1e-3)


def test_user_metric_is_used() -> None:
    seen = []

    def metric(out: torch.Tensor, ref: torch.Tensor) -> float:
        seen.append(out.shape)
        return -float((out - ref).abs().mean())

    res = scan(
        TwoBranch(),
        calibration=torch.randn(8, 16),
        metric=metric,
        amounts=(0.5,),
        select="linear",
        progress=False,
    )
    assert res.baseline == 0.0 and len(seen) == 1 + len(res.layers)


__all__ = ["one_thread"]  # the autouse fixture applies to this module
