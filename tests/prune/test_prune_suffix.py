"""The scan's partial re-runs give exactly the scores of full forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import TinyMobileNet, TinyResNet, TinyViT, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import allocate, cosine_agreement, scan
from dfcompress.prune._suffix import SuffixRunner, trace_opaque
from dfcompress.prune._targets import prunable_layers
from strategies import small_nets


def full_forward_scores(
    net: nn.Module, x: torch.Tensor, grid: tuple[float, ...]
) -> dict[str, tuple[float, ...]]:
    """Each layer pruned alone on a fresh copy, scored by an ordinary forward."""
    net = net.eval()
    with torch.no_grad():
        ref = net(x)
        out = {}
        for name in prunable_layers(net):
            scores = []
            for a in grid:
                work = copy.deepcopy(net)
                m = work.get_submodule(name)
                w = m.weight.detach()
                order = torch.sort(w.abs().flatten(), stable=True).indices
                flat = w.flatten().clone()
                flat[order[: round(a * w.numel())]] = 0
                m.weight.copy_(flat.view_as(w))
                scores.append(cosine_agreement(work(x), ref))
            out[name] = tuple(scores)
    return out


class Checked(nn.Module):
    """A front end whose shape check cannot be traced, around a traceable body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyResNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("three channels expected")
        return self.body(x)


class Inplace(nn.Module):
    """In-place activations and an in-place add on values computed upstream."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x))
        y = self.b(h)
        y += h
        return self.c(torch.relu_(y) + h)


GRID = (0.3, 0.6, 0.9)


@pytest.mark.filterwarnings("ignore:pruning these layers")
@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (TinyResNet, (6, 3, 8, 8)),
        (TinyMobileNet, (6, 3, 8, 8)),
        (TinyViT, (6, 3, 16, 16)),
        (Checked, (6, 3, 8, 8)),
        (Inplace, (6, 6)),
    ],
)
def test_scan_scores_equal_full_forward_scores(
    factory: type[nn.Module], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    net, x = factory().eval(), torch.randn(shape)
    # quick=False: every (layer, amount) measured on the model as is (no BatchNorm folding)
    res = scan(net, calibration=x, amounts=GRID, n_samples=shape[0], progress=False, quick=False)
    expected = full_forward_scores(net, x, GRID)
    assert {ly.name: ly.scores for ly in res.layers} == expected
    assert [ly.name for ly in res.layers] == list(expected)  # model order kept


@pytest.mark.filterwarnings("ignore:pruning these layers")
@settings(max_examples=15, deadline=None)
@given(net=small_nets(), n=st.integers(1, 5))
def test_scan_is_exact_on_random_nets(net: nn.Module, n: int) -> None:
    x = torch.randn(n, 3, 6, 6)
    res = scan(net, calibration=x, amounts=(0.5, 0.9), n_samples=n, progress=False, quick=False)
    assert {ly.name: ly.scores for ly in res.layers} == full_forward_scores(net, x, (0.5, 0.9))


def test_untraceable_module_is_kept_whole_and_the_rest_traced() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front, self.tail = Checked(), nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tail(self.front(x))

    graph = trace_opaque(Outer())
    assert graph is not None
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == ["front", "tail"]
    assert trace_opaque(Checked()) is None  # the root itself cannot be traced


def test_layers_inside_an_opaque_block_reuse_upstream_blocks() -> None:
    torch.manual_seed(0)
    net = Checked().eval()
    runner = SuffixRunner(copy.deepcopy(net), torch.randn(4, 3, 8, 8))
    assert not runner.traced
    ref = runner.reference()
    names = list(prunable_layers(net))
    with torch.no_grad():
        outs = {name: run() for name, run in runner.walk(names)}
    assert all(torch.equal(o, ref) for o in outs.values())
    # blocks finished before a late layer are replayed, not recomputed
    assert runner.cost < runner.calls - 1


def test_stop_below_skips_amounts_and_caps_the_allocation() -> None:
    torch.manual_seed(0)
    net, x = TinyResNet().eval(), torch.randn(8, 3, 8, 8)
    grid = (0.2, 0.4, 0.6, 0.8, 0.9)
    full = scan(net, calibration=x, amounts=grid, progress=False)
    stop = sorted(s for ly in full.layers for s in ly.scores)[len(full.layers) * 2]
    cut = scan(net, calibration=x, amounts=grid, stop_below=stop, progress=False)
    assert cut.forward_passes < full.forward_passes
    for a, b in zip(full.layers, cut.layers, strict=True):
        k = len(b.scores)
        assert b.scores == a.scores[:k]  # what was measured is the same
        assert k == len(grid) or b.scores[-1] < stop <= min(b.scores[:-1], default=1.0)
    out = allocate(cut, 0.2)
    assert out.achieved == pytest.approx(0.2, abs=1e-3)
    for ly in out.layers:
        assert ly.chosen <= ly.amounts[-1]
    with pytest.raises(DfcompressError, match="stop_below"):
        allocate(cut, 0.89)


__all__ = ["one_thread"]
