"""compare, the sensitivity scan and prune on a local Ray cluster: same results as the local loop.

One local cluster (2 CPUs, no dashboard) serves the whole module. xdist may
hand this module's tests to two workers; a file lock lets only one of them
hold a cluster at a time, so two clusters never compete for the 2 CPUs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from ray_faults import unsendable_model  # noqa: E402

from dfcompress import compare, compress, prune  # noqa: E402
from dfcompress.demo import demo_detector  # noqa: E402
from dfcompress.distributed import DatasetShards, RayExecutor  # noqa: E402
from dfcompress.distributed.executor import run_units  # noqa: E402
from dfcompress.errors import DfcompressError  # noqa: E402
from dfcompress.prune import scan  # noqa: E402

HERE = Path(__file__).resolve().parent
TWO = RayExecutor(num_workers=2)


pytestmark = pytest.mark.filterwarnings("ignore:pruning these layers:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    lock = open(Path(tempfile.gettempdir()) / "dfcompress-test-ray.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    old = os.environ.get("PYTHONPATH")
    # workers import the failing dataset factories of ray_faults by name
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return demo_detector((8, 16)).eval()


def _same_reports(a: object, b: object) -> None:
    for x, y in zip(a.variants, b.variants, strict=True):  # type: ignore[attr-defined]
        assert x.name == y.name
        assert np.array_equal(x.scores, y.scores), x.name
        assert x.metrics.auc == y.metrics.auc
    assert a.names == b.names  # type: ignore[attr-defined]
    assert np.array_equal(a.labels, b.labels)  # type: ignore[attr-defined]


def test_compare_in_memory_data_scores_bit_for_bit(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, 32, 32, generator=g)
    y = torch.arange(40) % 2
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    # a quantized and a pruned variant: their modules and sparse tensors travel too
    variants = {"baseline": net, "q8": compress(net, "q8", [x[:8]], progress=False)}
    variants["p50"] = prune(net, 0.5, progress=False)
    kw = {"progress": False, "gradcam": False, "measure_repeats": 1}
    local = compare(variants, data, **kw)  # type: ignore[arg-type]
    remote = compare(variants, data, executor=TWO, **kw)  # type: ignore[arg-type]
    _same_reports(local, remote)


def test_compare_dataset_shards_read_by_workers(net: torch.nn.Module) -> None:
    data = DatasetShards.proxy("test", size=32, n=36, batch_size=8)
    local = compare({"baseline": net}, data, progress=False, top_k=2)
    remote = compare({"baseline": net}, data, progress=False, top_k=2, executor="ray")
    _same_reports(local, remote)
    assert remote.names[0].startswith(("real/", "fake/"))
    panels = [[p.index for p in ps] for r in (local, remote) for ps in r.variants[0].cams.values()]
    assert panels[:4] == panels[4:]  # Grad-CAM shows the same samples


def test_scan_and_prune_match_the_local_scan(net: torch.nn.Module) -> None:
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = {"calibration": x, "amounts": (0.3, 0.6, 0.9), "progress": False}
    # Ray measures every (layer, amount) on the model as is, like quick=False here
    local = scan(net, quick=False, **kw)  # type: ignore[arg-type]
    remote = scan(net, executor=TWO, **kw)  # type: ignore[arg-type]
    assert remote.layers == local.layers and remote.baseline == local.baseline
    early = scan(net, stop_below=0.999, executor=TWO, **kw)  # type: ignore[arg-type]
    assert early.layers == scan(net, stop_below=0.999, quick=False, **kw).layers  # type: ignore[arg-type]
    a = prune(net, 0.5, sensitivity=True, calibration=x, progress=False)
    b = prune(net, 0.5, sensitivity=True, calibration=x, progress=False, executor="ray")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_killed_worker_is_retried_and_nothing_is_lost(net: torch.nn.Module, tmp_path: Path) -> None:
    kwargs = {"split": "test", "size": 32, "n": 32, "seed": 0}
    marker = tmp_path / "killed"
    flaky = DatasetShards(
        "ray_faults:killing_proxy",
        {"marker": str(marker), "driver_pid": os.getpid(), **kwargs},
        batch_size=8,
    )
    remote = compare({"baseline": net}, flaky, progress=False, gradcam=False, executor=TWO)
    assert marker.exists()  # a worker died
    plain = DatasetShards.proxy(**kwargs, batch_size=8)  # type: ignore[arg-type]
    local = compare({"baseline": net}, plain, progress=False, gradcam=False)
    _same_reports(local, remote)
    assert len(remote.variants[0].scores) == 32


def test_bad_shard_fails_the_run_naming_the_shard(net: torch.nn.Module) -> None:
    bad = DatasetShards(
        "ray_faults:broken_proxy",
        {"bad": 13, "split": "test", "size": 32, "n": 32, "seed": 0},
        batch_size=8,
    )
    with pytest.raises(DfcompressError, match=r"shard 0 \(batches 0\.\.1 .*sample 13 is truncated"):
        compare({"baseline": net}, bad, progress=False, gradcam=False, executor=TWO)


class _Bar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


def test_results_come_back_in_unit_order_and_the_bar_counts_units() -> None:
    from ray_faults import late_echo

    units = [(0.4 if i == 0 else 0.0, i) for i in range(5)]  # the first unit finishes last
    bar = _Bar()
    out = run_units(ray, TWO, late_echo, units, lambda i: f"unit {i}", bar=bar)
    assert out == [0, 1, 2, 3, 4] and bar.n == 5


def test_model_without_constructor_fails_before_leaving() -> None:
    x, y = torch.rand(8, 3, 2, 2), torch.arange(8) % 2
    with pytest.raises(DfcompressError, match="variant 'baseline' cannot be sent to Ray workers"):
        compare(
            {"baseline": unsendable_model()}, (x, y), progress=False, gradcam=False, executor=TWO
        )
