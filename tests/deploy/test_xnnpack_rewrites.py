"""Rewrites that put pools, concats, reshapes and signs inside XNNPACK, values unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _xnnpack_nets import quantized_for_xnnpack
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

pytest.importorskip("torchao")

from dfcompress.deploy._xnnpack_rewrites import float_scalars, floor_pools
from dfcompress.deploy._xnnpack_sign import float_signs
from dfcompress.models import binary_sign

_N = 64  #: the exported graph's input size


def _padded(values: list[float]) -> Tensor:
    return torch.tensor(values + [1.0] * (_N - len(values)), dtype=torch.float32)


class _Sign(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return binary_sign(x)


def _rewritten_sign() -> torch.fx.GraphModule:
    graph = torch.export.export(_Sign(), (torch.zeros(_N),)).module()
    assert float_scalars(graph) == 2  # the 2 and the 1 of mask * 2 - 1
    assert float_signs(graph) == 1
    names = {str(getattr(n.target, "__name__", n.target)) for n in graph.graph.nodes}
    assert not any(name.startswith("ge") for name in names)
    return graph  # type: ignore[return-value]


_EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    3.4e38,
    -3.4e38,
    math.inf,
    -math.inf,
]


def test_float_sign_rewrite_is_exact_on_the_edges_of_float32() -> None:
    graph = _rewritten_sign()
    tiny = float(torch.finfo(torch.float32).smallest_normal) * 2.0**-23  # 2**-149
    x = _padded([*_EDGES, tiny, -tiny, 2 * tiny, -2 * tiny])
    assert float(x[len(_EDGES) + 1]) == -tiny != 0.0  # the subnormals are representable
    torch.testing.assert_close(graph(x), binary_sign(x), rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_float_sign_rewrite_equals_the_comparison(values: list[float]) -> None:
    x = _padded(values)
    torch.testing.assert_close(_rewritten_sign()(x), binary_sign(x), rtol=0, atol=0)


class _Pooled(nn.Module):
    def __init__(self, ceil: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=ceil, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.pool(x)
        return out


@pytest.mark.parametrize("side", [8, 9])
def test_ceil_mode_pools_become_floor_mode_only_where_it_changes_nothing(side: int) -> None:
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    graph = torch.export.export(_Pooled(ceil=True), (x,)).module()
    changed = floor_pools(graph)  # type: ignore[arg-type]
    assert changed == (1 if side % 2 == 0 else 0)
    torch.testing.assert_close(graph(x), _Pooled(ceil=True)(x), rtol=0, atol=0)


class _ShortcutNet(nn.Module):
    """A BNext-style strided shortcut: ceil-mode average pools of an int8 tensor and of
    a float PReLU's output, a one-tensor concat and a flatten before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        y = torch.cat([self.conv(x)], dim=1) + self.pool(x) * self.pool(self.act(x))
        out: Tensor = self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))
        return out


@pytest.mark.parametrize("side", [16, 15])
def test_shortcut_runs_in_one_partition_where_the_pools_divide(side: int, tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    import dfcompress

    torch.manual_seed(0)
    net = _ShortcutNet().eval()
    q, test = quantized_for_xnnpack(net, (3, side, side), 16, 32)
    for name, model in (("float", net), ("int8", q)):
        art = dfcompress.export(model, tmp_path / f"{name}.pte", test)
        assert art.agreement is not None and art.agreement.passed, name
        if side % 2 == 0:  # pools, concat and flatten all inside XNNPACK
            assert art.details["non_delegated"] == {} and art.details["delegates"] == 1, name
        else:  # ceil mode adds a window: the pools stay ceil-mode, in the portable kernels
            assert art.details["non_delegated"].get("avg_pool2d", 0) >= 1, name


class _SharedConv(nn.Module):
    """One convolution module called twice (shared weights), then a mean that drops
    its dimensions: research code's shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(torch.relu(self.conv(x))))
        out: Tensor = self.head(x.mean((2, 3)))
        return out


def test_a_module_called_twice_exports_as_int8_in_one_partition(tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    import dfcompress

    torch.manual_seed(0)
    net = _SharedConv().eval()
    q, test = quantized_for_xnnpack(net, (3, 16, 16), 16, 32)
    # Before: the second call kept a float weight on int8 inputs, and XNNPACK refused
    # the file at load ("Failed to create convolution node").
    art = dfcompress.export(q, tmp_path / "shared.pte", test)
    assert art.agreement is not None and art.agreement.passed
    assert art.details["non_delegated"] == {} and art.details["delegates"] == 1
    with torch.no_grad():  # still the float network's function
        torch.testing.assert_close(q(test), net(test), atol=0.05, rtol=0.1)
