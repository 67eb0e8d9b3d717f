"""measure(): hand-computed parameter and MAC counts, sparsity, the model left untouched."""

from __future__ import annotations

import torch
from torch import nn

import dfcompress as dfc


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 + 8 = 224 params
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 8*1*9 + 8 = 80 params
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),  # 18 params
    )


def test_counts_match_hand_computation() -> None:
    model = net()
    m = dfc.measure(model, torch.zeros(2, 3, 16, 16), repeats=2, warmup=0)
    assert m.params == 224 + 80 + 18
    hw = 16 * 16
    per_sample = 8 * 3 * 9 * hw + 8 * 9 * hw + 8 * 2
    assert m.macs == 2 * per_sample
    assert m.batch_size == 2 and m.threads is not None and m.threads >= 1
    assert m.latency_ms is not None and m.latency_ms > 0
    assert m.peak_rss_bytes is not None and m.peak_rss_bytes > 10_000_000
    assert m.serialized_bytes == dfc.io.serialized_size(model)
    assert "MB" in m.table() and f"{m.params:,}" in m.table()


def test_sparsity_and_static_measurement() -> None:
    model = net()
    with torch.no_grad():
        model[0].weight.zero_()
    m = dfc.measure(model)
    assert m.nonzero_params == m.params - 216
    assert abs(m.sparsity - 216 / m.params) < 1e-12
    assert m.macs is None and m.latency_ms is None


def test_model_mode_and_threads_restored() -> None:
    model = net().train()
    threads = torch.get_num_threads()
    dfc.measure(model, torch.zeros(1, 3, 8, 8), repeats=1, threads=1)
    assert model.training
    assert torch.get_num_threads() == threads
