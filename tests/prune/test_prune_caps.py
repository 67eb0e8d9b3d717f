"""Per-layer caps on global L1 pruning: no layer emptied, the total amount still exact."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import one_thread  # noqa: F401 - autouse fixture
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import l1_unstructured
from dfcompress.prune._caps import cap_counts, is_depthwise


def _separable(seed: int, dw_scale: float) -> nn.Sequential:
    """Pointwise / depthwise convs; the depthwise weights are ``dw_scale`` times smaller,
    as in a BatchNorm network whose BatchNorm rescales them back."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 24, 1),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    net(torch.zeros(1, 3, 2, 2))
    with torch.no_grad():
        for i in (1, 3):
            net[i].weight.mul_(dw_scale)
    return net


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _fraction(m: nn.Module) -> float:
    return float((m.weight == 0).float().mean())


def _zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


def _depends_on_input(net: nn.Module, x: torch.Tensor) -> bool:
    out = net(x)
    return bool((out - out[0]).abs().max() > 0)


def test_uncapped_global_pruning_empties_depthwise_layers_capped_keeps_them() -> None:
    net = _separable(0, dw_scale=1e-3)
    bare = l1_unstructured(net, 0.5, layer_cap=None, depthwise_cap=None)
    assert [_fraction(bare[i]) for i in (1, 3)] == [1.0, 1.0]
    capped = l1_unstructured(net, 0.5)  # default caps
    assert [_fraction(capped[i]) for i in (1, 3)] == [0.5, 0.5]
    total = sum(m.weight.numel() for m in _layers(net))
    assert sum(_zeros(m) for m in _layers(capped)) == round(0.5 * total)
    x = torch.randn(4, 3, 2, 2)
    with torch.no_grad():  # emptied depthwise layers cut the input off the output
        assert not _depends_on_input(bare, x) and _depends_on_input(capped, x)


@settings(max_examples=30, deadline=None)
@given(
    amount=st.floats(0.0, 0.95, allow_nan=False),
    seed=st.integers(0, 2**16),
    dw_scale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
    caps=st.tuples(st.sampled_from([None, 0.3, 0.6, 0.9]), st.sampled_from([None, 0.2, 0.5])),
)
def test_caps_hold_and_the_total_is_exact(
    amount: float, seed: int, dw_scale: float, caps: tuple[float | None, float | None]
) -> None:
    net = _separable(seed, dw_scale)
    layer_cap, dw_cap = caps
    pruned = l1_unstructured(net, amount, layer_cap=layer_cap, depthwise_cap=dw_cap)
    layers = _layers(pruned)
    total = sum(m.weight.numel() for m in layers)
    assert sum(_zeros(m) for m in layers) == round(amount * total)
    for m in layers:
        cap = dw_cap if is_depthwise(m) else layer_cap
        if cap is not None:
            n = m.weight.numel()
            assert _zeros(m) <= max(math.floor(cap * n), math.ceil(amount * n))


@settings(max_examples=30, deadline=None)
@given(amount=st.floats(0.05, 0.9), seed=st.integers(0, 2**16))
def test_capped_layers_aside_the_smallest_magnitudes_go(amount: float, seed: int) -> None:
    net = _separable(seed, dw_scale=1e-3)
    pruned = l1_unstructured(net, amount)
    caps = cap_counts(_layers(net), amount, 0.9, 0.5)
    kept, dropped = [], []
    for orig, new, cap in zip(_layers(net), _layers(pruned), caps, strict=True):
        if _zeros(new) == cap:
            continue  # held at its cap: it keeps weights smaller than others lose
        w, z = orig.weight.detach().abs().flatten(), new.weight.flatten() == 0
        kept.append(w[~z])
        dropped.append(w[z])
    k, d = torch.cat(kept), torch.cat(dropped)
    if len(k) and len(d):
        assert float(d.max()) <= float(k.min())


@settings(max_examples=20, deadline=None)
@given(amount=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_without_caps_it_is_one_global_threshold(amount: float, seed: int) -> None:
    net = _separable(seed, dw_scale=0.1)
    bare = l1_unstructured(net, amount, layer_cap=None, depthwise_cap=None)
    flat = torch.cat([m.weight.detach().abs().flatten() for m in _layers(net)])
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    pruned[torch.sort(flat, stable=True).indices[: round(amount * flat.numel())]] = True
    got = torch.cat([m.weight.detach().flatten() == 0 for m in _layers(bare)])
    assert torch.equal(got, pruned)


def test_local_scope_ignores_caps() -> None:
    net = _separable(0, dw_scale=1e-3)
    pruned = l1_unstructured(net, 0.8, scope="local", depthwise_cap=0.2)
    assert _fraction(pruned[1]) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_cap": 0.0}, r"layer_cap=0.0 is out of range: use a fraction in \(0, 1\] or None"),
        ({"depthwise_cap": 1.5}, r"depthwise_cap=1.5 is out of range"),
        ({"layer_cap": True}, r"layer_cap=True is out of range"),
    ],
)
def test_bad_caps_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        l1_unstructured(nn.Linear(4, 4), 0.5, **kwargs)  # type: ignore[arg-type]
