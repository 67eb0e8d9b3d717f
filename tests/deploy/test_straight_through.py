"""Straight-through-estimator terms leave the exported graph; the forward stays the same."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dfcompress.deploy._ste import drop_straight_through


class _Clamped(nn.Module):
    """``sign(x) + (c - c.detach())``: ReActNet/BNext's hard-tanh estimator."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.clamp(-1.5, 1.5)
        return torch.sign(x) + (c - c.detach())


class _Detached(nn.Module):
    """``f.detach() - c.detach() + c``: the form research code often writes."""

    def forward(self, x: Tensor) -> Tensor:
        c = torch.tanh(x)
        f = torch.sign(x)
        return f.detach() - c.detach() + c


class _DetachedDifference(nn.Module):
    """``(f - c).detach() + c``."""

    def forward(self, x: Tensor) -> Tensor:
        c = x * 0.5
        return (torch.sign(x) - c).detach() + c


class _Broadcast(nn.Module):
    """A zero difference added to a smaller tensor: the sum's shape is the difference's."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.clamp(-1.0, 1.0)
        return x.mean(dim=1, keepdim=True) + (c - c.detach())


class _Gradient(nn.Module):
    """A real difference of two tensors: not a straight-through term."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.clamp(-1.0, 1.0)
        return torch.sign(x) + (c - x.detach())


def _traced(module: nn.Module) -> torch.fx.GraphModule:
    x = torch.randn(2, 3, 4, 4)
    return torch.export.export(module, (x,)).module()  # type: ignore[return-value]


def _targets(graph: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("module", [_Clamped(), _Detached(), _DetachedDifference()])
def test_each_estimator_form_is_removed_and_the_forward_kept(module: nn.Module) -> None:
    graph = _traced(module)
    assert any("detach" in t for t in _targets(graph))
    assert drop_straight_through(graph) == 1
    assert not any("detach" in t for t in _targets(graph))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(graph(x), module(x))


@pytest.mark.parametrize("module", [_Broadcast(), _Gradient()])
def test_sums_that_are_not_estimators_stay(module: nn.Module) -> None:
    graph = _traced(module)
    before = [str(n.target) for n in graph.graph.nodes]
    assert drop_straight_through(graph) == 0
    assert [str(n.target) for n in graph.graph.nodes] == before
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(graph(x), module(x))
