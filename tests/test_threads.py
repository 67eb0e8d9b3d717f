"""Verbs are safe to call from several threads on different models.

torch.fx patches ``nn.Module.__call__`` process-wide while it traces; dfcompress
traces under one lock, hands other threads' module calls to the real forward,
and never leaves the patch installed.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch import nn

import dfcompress as dfc
from dfcompress._fx import ThreadSafeTracer, trace

_ORIGINAL_CALL = nn.Module.__call__
X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 1),
    ).eval()


MODELS = {seed: net(seed) for seed in range(3)}  # built here: seeding is process-wide


def job(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two verbs that trace with torch.fx (BatchNorm folding, the sensitivity scan) on a copy."""
    model = copy.deepcopy(MODELS[seed])
    q = dfc.quantize(model, "int8", X, progress=False)
    p = dfc.prune(model, 0.5, sensitivity=True, calibration=X, progress=False)
    with torch.no_grad():
        return q(X), p(X)


@pytest.mark.filterwarnings("ignore:pruning these layers")  # the 6 -> 1 head scores flat
def test_threads_compressing_different_models_match_the_serial_results() -> None:
    seeds = [0, 1, 2] * 6  # 18 jobs, 36 traced verb calls
    serial = {s: job(s) for s in set(seeds)}
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(job, seeds))
    for seed, (q, p) in zip(seeds, results, strict=True):
        assert torch.equal(q, serial[seed][0])
        assert torch.equal(p, serial[seed][1])
    assert nn.Module.__call__ is _ORIGINAL_CALL
    torch.manual_seed(0)
    plain = nn.Linear(2, 1)
    assert plain(torch.ones(1, 2)).shape == (1, 1)


class _Gate(nn.Module):
    """A model whose forward waits (mid-trace) until the test lets it go on."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.entered, self.release = entered, release

    def forward(self, x: Any) -> Any:
        self.entered.set()
        self.release.wait(10)
        return self.fc(x)


def test_a_forward_in_another_thread_during_a_trace_runs_for_real() -> None:
    entered, release = threading.Event(), threading.Event()
    gate = _Gate(entered, release)
    tracing = threading.Thread(target=trace, args=(ThreadSafeTracer(), gate))
    tracing.start()
    try:
        assert entered.wait(10)
        assert nn.Module.__call__ is not _ORIGINAL_CALL  # the trace's patch is installed now
        torch.manual_seed(0)
        other = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        out = other(torch.ones(4, 2))
        assert isinstance(out, torch.Tensor) and out.shape == (4, 3)
    finally:
        release.set()
        tracing.join(10)
    assert nn.Module.__call__ is _ORIGINAL_CALL


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return x


def test_a_failed_trace_leaves_the_process_working() -> None:
    with pytest.raises(Exception, match="symbolically traced"):
        trace(ThreadSafeTracer(), _Untraceable())
    assert nn.Module.__call__ is _ORIGINAL_CALL
    assert nn.Module.__getattr__ is not None
    out = dfc.quantize(_Untraceable(), "int8", torch.rand(4, 2), progress=False)
    assert out(torch.rand(4, 2)).shape == (4, 2)
