from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import TinyResNet, one_thread
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.prune import get_masks, l1_unstructured, make_permanent, sparsity

AMOUNTS = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


def _net(seed: int, sizes: tuple[int, int, int]) -> nn.Sequential:
    torch.manual_seed(seed)
    a, b, c = sizes
    return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, 1))


def _zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


SIZES = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=40, deadline=None)
@given(amount=AMOUNTS, seed=st.integers(0, 2**16), sizes=SIZES)
def test_global_sparsity_is_exact(amount: float, seed: int, sizes: tuple[int, int, int]) -> None:
    net = _net(seed, sizes)
    n = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    pruned = l1_unstructured(net, amount, scope="global")
    layers = [m for m in pruned if isinstance(m, nn.Linear)]
    assert sum(_zeros(m) for m in layers) == round(amount * n)


@settings(max_examples=40, deadline=None)
@given(amount=AMOUNTS, seed=st.integers(0, 2**16), sizes=SIZES)
def test_local_sparsity_is_exact_per_layer(
    amount: float, seed: int, sizes: tuple[int, int, int]
) -> None:
    net = _net(seed, sizes)
    pruned = l1_unstructured(net, amount, scope="local")
    for m in pruned:
        if isinstance(m, nn.Linear):
            assert _zeros(m) == round(amount * m.weight.numel())


def test_ties_are_broken_to_the_exact_count() -> None:
    net = nn.Linear(10, 10)
    with torch.no_grad():
        net.weight.fill_(0.5)
    assert _zeros(l1_unstructured(net, 0.37)) == 37


@settings(max_examples=30, deadline=None)
@given(amount=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_global_removes_the_smallest_magnitudes_across_layers(amount: float, seed: int) -> None:
    net = _net(seed, (6, 8, 5))
    with torch.no_grad():  # very different scales per layer
        net[2].weight.mul_(100.0)
    pruned = l1_unstructured(net, amount, scope="global", layer_cap=None, depthwise_cap=None)
    kept, dropped = [], []
    for orig, new in zip(net, pruned, strict=True):
        if isinstance(orig, nn.Linear):
            w, z = orig.weight.detach().abs().flatten(), new.weight.flatten() == 0
            kept.append(w[~z])
            dropped.append(w[z])
    k, d = torch.cat(kept), torch.cat(dropped)
    if len(k) and len(d):
        assert float(d.max()) <= float(k.min())


def test_per_type_amounts_and_bias_bn_untouched() -> None:
    net = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    net(x)
    pruned = l1_unstructured(net, {"conv": 0.3, "linear": 0.2}, scope="local")
    for (name, m), (_, orig) in zip(pruned.named_modules(), net.named_modules(), strict=True):
        if isinstance(m, nn.Conv2d):
            assert _zeros(m) == round(0.3 * m.weight.numel()), name
        elif isinstance(m, nn.Linear):
            assert _zeros(m) == round(0.2 * m.weight.numel())
            assert torch.equal(m.bias, orig.bias)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, orig.weight)


def test_callers_model_untouched_and_inplace() -> None:
    net = _net(0, (8, 8, 8))
    before = copy.deepcopy(net.state_dict())
    out = l1_unstructured(net, 0.5)
    assert out is not net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    same = l1_unstructured(net, 0.5, inplace=True)
    assert same is net and sparsity(net) == pytest.approx(0.5, abs=0.02)


def test_make_permanent_leaves_plain_parameters() -> None:
    net = _net(0, (8, 8, 8))
    masked = l1_unstructured(net, 0.5, keep_masks=True)
    assert set(get_masks(masked)) == {"0", "2", "4"}
    keys_before = set(net.state_dict())
    plain = make_permanent(masked)
    assert get_masks(plain) == {}
    assert set(plain.state_dict()) == keys_before  # no extra buffers or *_orig
    for m in plain.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
        if isinstance(m, nn.Linear):
            assert type(m.weight) is nn.Parameter
    assert sparsity(plain) == pytest.approx(0.5, abs=0.02)


def test_masks_hold_through_training_and_nest() -> None:
    net = _net(0, (8, 8, 8))
    masked = l1_unstructured(net, 0.3, keep_masks=True)
    first = {k: v.clone() for k, v in get_masks(masked).items()}
    opt = torch.optim.SGD(masked.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        masked(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()
    masked(torch.randn(1, 8))  # the forward re-applies the masks
    assert sparsity(masked) >= 0.3 - 0.02
    masked = l1_unstructured(masked, 0.6, keep_masks=True, inplace=True)
    for k, m in get_masks(masked).items():
        assert not bool((m & ~first[k]).any())  # pruned weights stay pruned
    assert sparsity(make_permanent(masked)) == pytest.approx(0.6, abs=0.02)


def test_binary_layers_are_never_pruned() -> None:
    from dfcompress.models.bnext import BNext

    net = BNext((8, 16), num_classes=1)
    pruned = l1_unstructured(net, 0.5)
    for (n, m), (_, o) in zip(pruned.named_modules(), net.named_modules(), strict=True):
        if type(m).__name__ == "BinaryConv2d":
            assert torch.equal(m.weight, o.weight), n
    assert _zeros(pruned.stem_conv) > 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_bad_amounts_name_the_value(bad: object) -> None:
    with pytest.raises(DfcompressError, match="amount="):
        l1_unstructured(_net(0, (4, 4, 4)), bad)  # type: ignore[arg-type]


def test_bad_scope_and_unmatched_key() -> None:
    with pytest.raises(DfcompressError, match="'everywhere'"):
        l1_unstructured(_net(0, (4, 4, 4)), 0.5, scope="everywhere")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="conv"):
        l1_unstructured(_net(0, (4, 4, 4)), {"conv": 0.5})


__all__ = ["one_thread"]  # the autouse fixture applies to this module
