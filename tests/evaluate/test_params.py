"""Parameters at their logical count: packing weights does not change the count."""

from __future__ import annotations

import torch
from torch import nn

import dfcompress
from dfcompress.demo import demo_detector
from dfcompress.evaluate.params import logical_params
from dfcompress.models import BinaryConv2d


def test_quantized_and_packed_models_keep_their_parameter_count() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)
    ).eval()
    x = torch.rand(8, 3, 12, 12)
    base = logical_params(m)
    assert base == 3 * 8 * 9 + 8 + 8 + 1
    for recipe in ("q8", "q4"):
        q = dfcompress.compress(m, recipe, x, progress=False)
        assert sum(p.numel() for p in q.parameters()) < base  # the weights went into buffers
        assert logical_params(q) == base


def test_packed_binary_convolutions_count_one_weight_per_bit() -> None:
    d = demo_detector().eval()
    before = logical_params(d)
    convs = [m for m in d.modules() if isinstance(m, BinaryConv2d)]
    for c in convs:
        c.pack()
    assert all(c.weight is None for c in convs)
    assert logical_params(d) == before
