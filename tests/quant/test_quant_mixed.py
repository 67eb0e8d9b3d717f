"""int4-mixed: layers that cannot take 4 bits stay at 8, chosen by measured sensitivity."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.io import serialized_size
from dfcompress.quant import IntQuant, Mixed, PerChannel, PerGroup, PerTensor, quantize
from dfcompress.quant._mixed import (
    LOW,
    coarser_configs,
    layer_sensitivity,
    mixed_plan,
    sized_plan,
    upgrade_costs,
)
from dfcompress.quant.modules import QuantLayer


def _uneven_front() -> list[nn.Module]:
    """Conv, BatchNorm, ReLU, then a depthwise conv whose BatchNorm makes its channels uneven."""
    bn = nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.running_var.copy_(torch.logspace(-5, 0, 32))
    layers = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
    return [*layers, nn.Conv2d(32, 32, 3, padding=1, groups=32), bn, nn.ReLU()]


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        *_uneven_front(),
        nn.Conv2d(32, 64, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    with torch.no_grad():
        net[10].weight[:, 0].mul_(30.0)  # an outlier per row: 4-bit groups lose the rest
    return net.eval()


def _bits(q: nn.Module) -> dict[str, int]:
    return {n: m.bits for n, m in q.named_modules() if isinstance(m, QuantLayer)}


def test_int4_mixed_keeps_the_most_sensitive_layers_at_8_bits_and_beats_int4() -> None:
    net, x = _net(), torch.randn(16, 3, 16, 16)
    scores = layer_sensitivity(net, x, ["0", "3", "6", "10"])
    mixed = quantize(net, "int4-mixed", calibration=x, progress=False)
    four = quantize(net, "int4", progress=False)
    bits = _bits(mixed)
    worst = max(scores, key=scores.__getitem__)
    assert worst == "10" and bits[worst] == 8
    assert 4 in bits.values()  # not everything fell back
    sizes = {n: net.get_submodule(n).weight.numel() for n in scores}
    assert {n for n, b in bits.items() if b == 8} == mixed_plan(scores, sizes=sizes)
    with torch.no_grad():
        ref = net(x)
        assert float((mixed(x) - ref).pow(2).mean()) < float((four(x) - ref).pow(2).mean())


def test_mixed_plan_keeps_nothing_when_the_sum_is_within_budget() -> None:
    assert mixed_plan({"a": 0.001, "b": 0.002}, budget=0.01) == set()
    assert mixed_plan({"a": 0.02, "b": 0.002}, budget=0.01) == {"a"}


def test_mixed_plan_spends_8_bits_where_they_remove_most_noise_per_weight() -> None:
    # a wide layer with a little more noise than a small one: the small one goes to
    # 8 bits (10 weights), the wide one stays at 4 (1,000 weights)
    scores, sizes = {"wide": 0.012, "dw": 0.010, "rest": 0.001}, {"wide": 1000, "dw": 10, "rest": 5}
    assert mixed_plan(scores, budget=0.015, sizes=sizes) == {"dw"}
    assert mixed_plan(scores, budget=0.015) == {"wide"}  # by noise alone


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.tuples(st.floats(0.0, 1.0), st.integers(1, 10_000)),
        min_size=1,
        max_size=12,
    ),
    st.floats(0.0, 0.5),
)
def test_mixed_plan_leaves_at_most_the_budget_and_takes_the_densest_layers(
    layers: dict[str, tuple[float, int]], budget: float
) -> None:
    scores = {n: s for n, (s, _) in layers.items()}
    sizes = {n: k for n, (_, k) in layers.items()}
    high = mixed_plan(scores, budget=budget, sizes=sizes)
    assert sum(s for n, s in scores.items() if n not in high) <= budget + 1e-9
    # every layer kept at 8 bits is at least as dense as every layer left at 4
    if high and len(high) < len(scores):
        kept = min(scores[n] / sizes[n] for n in high)
        left = max(scores[n] / sizes[n] for n in scores if n not in high)
        assert kept >= left
    # nothing kept that was not needed: before the last layer taken (one of the least
    # dense kept), the rest was over the budget
    if high:
        least = min(scores[n] / sizes[n] for n in high)
        last = max(scores[n] for n in high if scores[n] / sizes[n] == least)
        assert sum(s for n, s in scores.items() if n not in high) + last > budget - 1e-9


def _wide_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU6(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64),
        nn.BatchNorm2d(64),
        nn.ReLU6(),
        nn.Conv2d(64, 128, 1),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 256),
    ).eval()


def test_mixed_max_size_keeps_the_packed_file_within_the_limit() -> None:
    net, x = _wide_net(), torch.randn(8, 3, 16, 16)
    full = serialized_size(net)

    def ratio(spec: Mixed) -> tuple[float, dict[str, int]]:
        q = quantize(net, spec, calibration=x, pack=True, progress=False)
        return serialized_size(q) / full, _bits(q)

    all_high, bits_high = ratio(Mixed(budget=0.0))  # no limit: every layer at 8 bits
    assert set(bits_high.values()) == {8}
    all_low = serialized_size(quantize(net, "int4", pack=True, progress=False)) / full
    limit = (all_low + all_high) / 2
    got, bits = ratio(Mixed(budget=0.0, max_size=limit))
    assert got <= limit
    assert set(bits.values()) == {4, 8}  # some layers kept at 8 bits, not all
    # the bytes the plan counted are the file's: all-int4 file + each layer's change
    # (8 bits, or 4 bits in coarser groups)
    q = quantize(net, Mixed(budget=0.0, max_size=limit), calibration=x, pack=True)
    configs = {n: m.config for n, m in q.named_modules() if isinstance(m, QuantLayer)}
    predicted = all_low * full + sum(
        upgrade_costs(net, [n], LOW, c)[n] for n, c in configs.items() if c != LOW
    )
    assert abs(predicted - got * full) <= 64 * len(configs)


def _wide_head_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        *_uneven_front(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    ).eval()


def test_mixed_max_size_spends_coarser_groups_bytes_on_8_bit_layers() -> None:
    net, x, xe = _wide_head_net(), torch.randn(16, 3, 16, 16), torch.randn(64, 3, 16, 16)
    full = serialized_size(net)
    limit = serialized_size(quantize(net, "int4", pack=True, progress=False)) / full + 0.001
    with torch.no_grad():
        ref = net(xe)

    def made(spec: Mixed) -> tuple[float, dict[str, IntQuant], float]:
        # the rounding noise alone: bias correction (default on here) would remove part of it
        q = quantize(net, spec, calibration=x, pack=True, progress=False, bias_correction=False)
        configs = {n: m.config for n, m in q.named_modules() if isinstance(m, QuantLayer)}
        with torch.no_grad():
            err = float((q(xe) - ref).pow(2).mean() / ref.var())
        return serialized_size(q) / full, configs, err

    size, configs, err = made(Mixed(max_size=limit))
    size_plain, configs_plain, err_plain = made(Mixed(max_size=limit, coarser_groups=()))
    assert size <= limit and size_plain <= limit
    coarse = [c for c in configs.values() if c.bits == 4]
    assert coarse and all(c.granularity == PerGroup(64, PerChannel(0)) for c in coarse)
    eights = sum(c.bits == 8 for c in configs.values())
    assert eights > sum(c.bits == 8 for c in configs_plain.values())
    assert err < 0.8 * err_plain  # the bytes saved went where they remove noise


def test_mixed_max_size_below_the_all_low_file_names_what_it_can_reach() -> None:
    with pytest.raises(DfcompressError, match=r"max_size=0\.01 cannot be met: .* already 0\.\d+"):
        quantize(_wide_net(), Mixed(max_size=0.01), calibration=torch.randn(4, 3, 16, 16))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["budget", "max_size", "low", "high"]),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 < v <= 1),
        st.booleans(),
        st.text(max_size=3),
        st.just(IntQuant(8, activations=IntQuant(8, PerTensor(), symmetric=False))),
    ),
)
def test_mixed_refuses_bad_settings_by_name(field: str, value: object) -> None:
    if field == "budget" and isinstance(value, float) and 0 <= value < float("inf"):
        value = -1.0 - value  # a valid budget otherwise (>= 0): make it negative
    with pytest.raises(DfcompressError, match=field):
        Mixed(**{field: value})  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(-500, 2_000)), min_size=1, max_size=3),
        min_size=1,
        max_size=5,
    ),
    st.integers(-1_000, 4_096),
)
def test_sized_plan_leaves_the_least_noise_that_fits(
    layers: list[list[tuple[float, int]]], room: int
) -> None:
    options = {f"l{i}": o for i, o in enumerate(layers)}
    plan = sized_plan(options, room, steps=20_000)  # one byte per unit: exact
    assert set(plan) == set(options)
    cost = sum(options[n][j][1] for n, j in plan.items())
    noise = sum(options[n][j][0] for n, j in plan.items())
    fits = [
        combo
        for combo in itertools.product(*(range(len(o)) for o in layers))
        if sum(o[j][1] for o, j in zip(layers, combo, strict=True)) <= room
    ]
    if not fits:  # nothing fits: each layer at its smallest
        assert all(options[n][j][1] == min(c for _, c in options[n]) for n, j in plan.items())
        return
    assert cost <= room
    best = min(sum(o[j][0] for o, j in zip(layers, combo, strict=True)) for combo in fits)
    assert noise <= best + 1e-9


def test_coarser_configs_keep_low_bits_and_fallback_in_larger_groups() -> None:
    assert [c.granularity for c in coarser_configs(LOW, (64, 32, 128, 64))] == [
        PerGroup(64, PerChannel(0)),
        PerGroup(128, PerChannel(0)),
    ]
    assert all(c.bits == LOW.bits for c in coarser_configs(LOW, (64,)))
    assert coarser_configs(IntQuant(4, PerChannel(0)), (64, 128)) == []


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(-4, 0), min_size=1, max_size=3).map(tuple),
        st.just((64, True)),
        st.just([64, 128]),
        st.text(max_size=3),
        st.just((64.0,)),
    )
)
def test_mixed_refuses_bad_coarser_groups_by_name(value: object) -> None:
    with pytest.raises(DfcompressError, match=r"coarser_groups=.* positive integer"):
        Mixed(coarser_groups=value)  # type: ignore[arg-type]
