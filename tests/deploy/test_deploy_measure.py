"""Latency and fresh-process peak memory of deployed files (on a test target)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import _double_target
from dfcompress.deploy import _measure, _targets
from dfcompress.deploy._artifact import Artifact
from dfcompress.deploy._export import export
from dfcompress.deploy._measure import (
    batch_of,
    fresh_latencies,
    fresh_peak_rss,
    latencies,
    measure_artifacts,
)
from dfcompress.deploy._probe import main as probe_main
from dfcompress.deploy._timer import main as timer_main
from dfcompress.errors import DfcompressError


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(_targets.TARGETS, "torchscript", _double_target.__name__)
    return "torchscript"


def _net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 1),
    ).eval()


def test_batch_of_repeats_rows_to_the_size_asked() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    assert batch_of(x, 1).tolist() == [[0.0, 1.0, 2.0]]
    assert batch_of(x, 5)[4].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(DfcompressError, match="at least one sample"):
        batch_of(torch.zeros(0, 3), 2)


def _spied(arts: dict[str, Any], seen: list[tuple[str, int]]) -> None:
    for k, art in arts.items():
        inner = art._runner
        assert inner is not None

        def spy(b: torch.Tensor, k: str = k, inner=inner) -> torch.Tensor:  # type: ignore[no-untyped-def]
            seen.append((k, int(b.shape[0])))
            return inner(b)

        object.__setattr__(art, "_runner", spy)


def test_latencies_time_every_file_at_every_batch(tmp_path: Path, double: str) -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    names = ("a", "b", "c", "d")
    arts = {
        k: export(_net(w), tmp_path / f"{k}.pt", x)
        for k, w in zip(names, (2, 3, 4, 5), strict=True)
    }
    seen: list[tuple[str, int]] = []
    _spied(arts, seen)
    lat = latencies(arts, x, batches=(1, 3), repeats=6, warmup=1, threads=1, settle=2)
    assert set(lat) == set(names) and all(set(v) == {1, 3} for v in lat.values())
    assert all(ms > 0 for v in lat.values() for ms in v.values())
    # the warm-up round: one run per file and batch; then each file runs three times
    # in a row (two untimed, one timed) per batch and round
    assert len(seen) == 4 * 2 + 6 * 4 * 2 * 3
    rounds = [seen[8 + i * 24 : 8 + (i + 1) * 24] for i in range(6)]
    orders = []
    for rnd in rounds:
        blocks = [rnd[j : j + 3] for j in range(0, 24, 3)]
        assert all(len(set(blk)) == 1 for blk in blocks)  # the same file and batch
        assert [blk[0][1] for blk in blocks] == [1] * 4 + [3] * 4  # batch 1, then 3
        order = [blk[0][0] for blk in blocks[:4]]
        assert sorted(order) == sorted(names) and order == [blk[0][0] for blk in blocks[4:]]
        orders.append(tuple(order))
    # the order changes between rounds, so no file is always the one after another
    assert len(set(orders)) > 1
    assert len({o[o.index("a") + 1] for o in orders if o[-1] != "a"}) > 1
    # seeded: the same order again
    first = list(seen)
    again: list[tuple[str, int]] = []
    _spied(arts, again)
    latencies(arts, x, batches=(1, 3), repeats=6, warmup=1, threads=1, settle=2)
    assert again == first


def test_latencies_time_the_run_after_the_settling_ones(
    tmp_path: Path, double: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is slow only right after another file is timed at its steady speed."""
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    arts = {k: export(_net(2), tmp_path / f"{k}.pt", x) for k in ("a", "b")}
    clock = [0.0]
    last: list[str] = [""]
    for k, art in arts.items():

        def run(b: torch.Tensor, k: str = k) -> torch.Tensor:
            clock[0] += 1.0 if last[0] == k else 5.0  # 5 s right after the other file
            last[0] = k
            return torch.zeros(int(b.shape[0]), 1)

        object.__setattr__(art, "_runner", run)
    monkeypatch.setattr(_measure.time, "perf_counter", lambda: clock[0])
    steady = latencies(arts, x, batches=(1,), repeats=5, settle=1)
    assert steady == {"a": {1: 1000.0}, "b": {1: 1000.0}}
    cold = latencies(arts, x, batches=(1,), repeats=5, settle=0)
    assert cold["a"][1] > 1000.0 and cold["b"][1] > 1000.0
    with pytest.raises(DfcompressError, match="settle=-1"):
        latencies(arts, x, settle=-1)


def test_pte_files_are_timed_on_the_threads_asked(tmp_path: Path) -> None:
    """ExecuTorch's pool (XNNPACK's threads) follows ``threads`` like torch, then is restored."""
    pytest.importorskip("executorch")
    from executorch.extension.pybindings import portable_lib

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    art = export(_net(2), tmp_path / "m.pte", x, target="xnnpack")
    inner = art._runner
    assert inner is not None
    pools: list[int] = []

    def spy(b: torch.Tensor) -> torch.Tensor:
        pools.append(int(portable_lib._threadpool_get_thread_count()))
        return inner(b)

    object.__setattr__(art, "_runner", spy)
    start = int(portable_lib._threadpool_get_thread_count())
    portable_lib._unsafe_reset_threadpool(2)  # as on a 2-core machine, whatever this one has
    try:
        latencies({"m": art}, x, batches=(1,), repeats=2, warmup=0, settle=0, threads=1)
        assert pools == [1, 1]
        assert portable_lib._threadpool_get_thread_count() == 2
        pools.clear()
        latencies({"m": art}, x, batches=(1,), repeats=2, warmup=0, settle=0, threads=None)
        assert pools == [2, 2]
    finally:
        portable_lib._unsafe_reset_threadpool(start)


def test_an_executorch_that_cannot_resize_its_pool_is_timed_on_it_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("executorch")
    from executorch.extension.pybindings import portable_lib

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    art = export(_net(2), tmp_path / "m.pte", x, target="xnnpack")
    before = int(portable_lib._threadpool_get_thread_count())
    monkeypatch.delattr(portable_lib, "_unsafe_reset_threadpool")
    with pytest.warns(RuntimeWarning, match=r"default pool, not on 1 thread"):
        lat = latencies({"m": art}, x, batches=(1,), repeats=2, warmup=0, settle=0, threads=1)
    assert lat["m"][1] > 0.0
    assert portable_lib._threadpool_get_thread_count() == before


def test_fresh_latencies_load_the_files_in_another_process(tmp_path: Path, double: str) -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    arts = {k: export(_net(w), tmp_path / f"{k}.pt", x) for k, w in (("a", 2), ("b", 4))}
    ran: list[str] = []
    for k, art in arts.items():
        # this process's runners must not be the ones timed
        object.__setattr__(art, "_runner", lambda b, k=k: ran.append(k))
    lat = fresh_latencies(arts, x, batches=(1, 3), repeats=2, settle=1)
    assert ran == []
    assert list(lat) == ["a", "b"] and all(set(v) == {1, 3} for v in lat.values())
    assert all(0 < ms < 10_000 for v in lat.values() for ms in v.values())
    # the costs say how they were timed
    cost = measure_artifacts(arts, x, batch_n=3, repeats=1, memory=False)["a"]
    assert cost.fresh_process and cost.settle == 3 and ran == []
    in_here = measure_artifacts(arts, x, batch_n=3, repeats=1, memory=False, fresh_process=False)
    assert not in_here["a"].fresh_process and ran


def test_fresh_latencies_refuse_what_a_process_cannot_load(tmp_path: Path, double: str) -> None:
    x = torch.rand(1, 3, 8, 8)
    plain = Artifact(tmp_path / "m.xml", "openvino", 1, None, {}, lambda b: b)
    with pytest.raises(DfcompressError, match=r"'ov'.*target 'openvino'.*latencies\(\)"):
        fresh_latencies({"ov": plain}, x)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    broken = Artifact(bad, double, bad.stat().st_size, None, {}, lambda b: b)
    with pytest.raises(DfcompressError, match=r"broken\.pt.*failed"):
        fresh_latencies({"broken": broken}, x, repeats=1)
    with pytest.raises(DfcompressError, match="repeats=0"):
        fresh_latencies({"broken": broken}, x, repeats=0)
    assert timer_main([]) == 2


def test_fresh_process_loads_the_file_and_reports_its_peak(tmp_path: Path, double: str) -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    art = export(_net(4), tmp_path / "m.pt", x)
    # measure_artifacts reads the peak through fresh_peak_rss; one fresh process serves both
    costs = measure_artifacts({"m": art}, x, batch_n=4, repeats=1)
    c = costs["m"]
    assert c.size_bytes == art.size_bytes and c.batch_n == 4 and c.threads == 1
    assert c.peak_rss_bytes is not None and c.latency_ms_b1 is not None
    # a Python process that imported torch: tens to hundreds of MB, not this process's figure
    assert 10e6 < c.peak_rss_bytes < 4e9
    assert c.runtime_rss_bytes is None  # only .pte files have a runtime without Python
    assert json.dumps(c.as_dict())


def test_a_file_that_cannot_load_names_the_file(tmp_path: Path, double: str) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(DfcompressError, match=r"broken\.pt"):
        fresh_peak_rss("torchscript", bad, (3, 8, 8))
    with pytest.raises(DfcompressError, match="target must be one of"):
        fresh_peak_rss("tflite", bad, (3, 8, 8))


def test_probe_prints_its_peak(
    tmp_path: Path, double: str, capsys: pytest.CaptureFixture[str]
) -> None:
    x = torch.rand(1, 3, 8, 8)
    art = export(_net(2), tmp_path / "m.pt", x)
    assert probe_main([_double_target.__name__, str(art.path), "3,8,8", "float32", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["peak_rss_bytes"] > 0
    assert probe_main([]) == 2
