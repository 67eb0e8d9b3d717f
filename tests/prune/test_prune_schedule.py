from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prune_nets import TinyResNet, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import cubic, linear, prune, reestimate_bn, sparsity


@pytest.mark.parametrize("sched", [linear, cubic])
@given(steps=st.integers(1, 20), target=st.floats(0.0, 0.99))
def test_schedules_rise_monotonically_to_the_target(sched, steps: int, target: float) -> None:  # type: ignore[no-untyped-def]
    values = [sched(s, steps, target) for s in range(1, steps + 1)]
    assert values[-1] == pytest.approx(target)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    assert all(0.0 <= v <= target + 1e-12 for v in values)


def test_cubic_prunes_faster_early() -> None:
    assert cubic(1, 4, 0.8) > linear(1, 4, 0.8)


def test_schedule_rejects_bad_steps() -> None:
    with pytest.raises(DfcompressError, match="step=5"):
        linear(5, 4, 0.5)


def test_iterative_prune_with_finetune_callback() -> None:
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    seen: list[tuple[int, float]] = []

    def finetune(model: nn.Module, step: int) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
        model(torch.randn(1, 8))  # masks hold through training
        seen.append((step, sparsity(model)))

    out = prune(net, 0.6, steps=3, schedule=cubic, finetune=finetune, progress=False)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert [round(sp, 2) for _, sp in seen] == [round(cubic(s, 3, 0.6), 2) for s in (1, 2, 3)]
    assert sparsity(out) == pytest.approx(0.6, abs=1e-3)
    assert all(not m._forward_pre_hooks for m in out.modules())


def test_bn_reestimation_after_pruning_changes_running_stats() -> None:
    net = TinyResNet().eval()
    data = torch.randn(16, 3, 8, 8) * 3 + 1
    out = prune(net, 0.5, calibration=data, recalibrate_bn=True, progress=False)
    assert not torch.equal(out.stem[1].running_mean, net.stem[1].running_mean)
    ref = reestimate_bn(prune(net, 0.5, progress=False), data)
    assert torch.allclose(ref.layer1.bn1.running_var, out.layer1.bn1.running_var)
    assert not out.training


def test_structured_iterative_reaches_the_cumulative_amount() -> None:
    net = TinyResNet(width=16)
    x = torch.randn(2, 3, 8, 8)
    steps: list[int] = []
    out = prune(
        net,
        0.5,
        method="structured",
        steps=2,
        example_inputs=x,
        finetune=lambda m, s: steps.append(s),
        progress=False,
    )
    assert steps == [1, 2]
    assert out.layer1.conv1.out_channels == 8
    assert out(x).shape == net(x).shape


__all__ = ["one_thread"]  # the autouse fixture applies to this module
