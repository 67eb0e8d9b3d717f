"""Shared hypothesis strategies: tensors with edge values and small random networks."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

FINITE = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
EDGE_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-8, -1e-8, 1e4, -1e4])


@st.composite
def shapes(
    draw: st.DrawFn, min_dims: int = 1, max_dims: int = 4, max_side: int = 6
) -> tuple[int, ...]:
    """A tensor shape with small sides."""
    n = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(1, max_side)) for _ in range(n))


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...] | None = None,
    *,
    edge: bool = True,
    zeros: float = 0.0,
) -> torch.Tensor:
    """A float32 tensor mixing ordinary values with edge values (and, if asked, many zeros)."""
    shp = shape if shape is not None else draw(shapes())
    n = math.prod(shp)
    elem = st.one_of(FINITE, EDGE_VALUES) if edge else FINITE
    values = draw(st.lists(elem, min_size=n, max_size=n))
    t = torch.tensor(values, dtype=torch.float32).reshape(shp)
    if zeros > 0:
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        t[torch.rand(shp, generator=g) < zeros] = 0.0
    return t


class SmallNet(nn.Module):
    """A conv/BN/linear net whose widths come from a hypothesis draw."""

    def __init__(self, c1: int = 4, c2: int = 8, hidden: int = 6, classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, groups=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


@st.composite
def small_nets(draw: st.DrawFn) -> SmallNet:
    """A randomly sized, randomly initialised SmallNet (seeded by the draw).

    It records its constructor, so ``dfcompress.save`` knows its sizes.
    """
    import dfcompress as dfc

    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    sizes = {
        "c1": draw(st.integers(1, 8)),
        "c2": draw(st.integers(1, 8)),
        "hidden": draw(st.integers(1, 8)),
        "classes": draw(st.integers(1, 3)),
    }
    return dfc.set_constructor(SmallNet(**sizes), SmallNet, **sizes).eval()
