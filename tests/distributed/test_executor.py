"""The executor argument, shard descriptions and model transfer, without a Ray cluster."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ray_faults import unsendable_model

from dfcompress import compare
from dfcompress.data import loader
from dfcompress.demo import demo_detector
from dfcompress.distributed import DatasetShards, RayExecutor, resolve_executor
from dfcompress.distributed._evaluate import shard_ranges
from dfcompress.distributed._transfer import function_ref, load_blob, pack_model
from dfcompress.distributed.executor import connect
from dfcompress.errors import DfcompressError, MissingExtraError
from dfcompress.prune import cosine_agreement, scan


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_workers": 0}, "num_workers=0 is invalid"),
        ({"num_workers": 1.5}, "num_workers=1.5 is invalid"),
        ({"resources": {"CPU": -1}}, r"resources\['CPU'\]=-1 is invalid"),
        ({"resources": {"CPU": 0}}, r"resources\['CPU'\]=0 is invalid"),
        ({"max_retries": -1}, "max_retries=-1 is invalid"),
    ],
)
def test_bad_executor_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        RayExecutor(**kwargs)  # type: ignore[arg-type]


def test_resources_become_task_options() -> None:
    ex = RayExecutor(resources={"CPU": 4, "GPU": 1, "big_memory": 1}, max_retries=2)
    assert ex.task_options() == {
        "num_cpus": 4,
        "num_gpus": 1,
        "resources": {"big_memory": 1},
        "max_retries": 2,
        "retry_exceptions": False,
    }
    assert ex.threads == 4


def test_unknown_executor_is_refused_everywhere() -> None:
    with pytest.raises(DfcompressError, match="executor='dask' is not known"):
        resolve_executor("dask")  # type: ignore[arg-type]
    net = demo_detector((8, 16)).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4) % 2
    with pytest.raises(DfcompressError, match="executor='dask'"):
        compare({"baseline": net}, (x, y), progress=False, executor="dask")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="executor='dask'"):
        scan(net, calibration=x, progress=False, executor="dask")  # type: ignore[arg-type]


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"dfcompress\[distributed\]"):
        connect(RayExecutor())


@given(st.integers(1, 200), st.integers(1, 16))
def test_shards_are_whole_contiguous_runs_of_batches(n_batches: int, n_shards: int) -> None:
    ranges = shard_ranges(n_batches, n_shards)
    assert len(ranges) == min(n_batches, n_shards)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_batches
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [hi - lo for lo, hi in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_dataset_shards_batch_like_the_proxy_loader() -> None:
    shards = DatasetShards.proxy("val", size=32, n=10, batch_size=4)
    batches = list(shards)
    ref = list(loader("val", size=32, n=10, batch_size=4, shuffle=False))
    assert shards.num_batches == len(ref) == 3
    for (x, y, names), (rx, ry, rnames) in zip(batches, ref, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry) and list(names) == list(rnames)


def test_dataset_shards_refuse_what_workers_cannot_rebuild() -> None:
    with pytest.raises(DfcompressError, match="factory='make_proxy' is invalid"):
        DatasetShards("make_proxy")
    with pytest.raises(DfcompressError, match="use JSON values only"):
        DatasetShards("dfcompress.data.proxy:make_proxy", {"config": object()})
    with pytest.raises(DfcompressError, match="batch_size=0 is invalid"):
        DatasetShards("dfcompress.data.proxy:make_proxy", batch_size=0)
    with pytest.raises(DfcompressError, match="must return a map-style dataset"):
        len(DatasetShards("dfcompress.data.proxy:ProxyConfig"))


def test_model_travels_as_a_safe_file_and_computes_the_same() -> None:
    torch.manual_seed(0)
    net = demo_detector((8, 16)).eval()
    x = torch.rand(3, 3, 32, 32)
    key, blob, allow = pack_model(net, "variant 'a'", x)
    assert blob[8:9] == b"{" and allow == []  # a safetensors header, not a pickle
    with torch.no_grad():
        assert torch.equal(load_blob((key, blob, allow))(x), net(x))


def test_model_without_constructor_is_refused_with_the_fix() -> None:
    with pytest.raises(DfcompressError, match=r"variant 'v' cannot be sent.*set_constructor"):
        pack_model(unsendable_model(), "variant 'v'", torch.rand(2, 3, 2, 2))


def test_plain_torch_nn_model_travels_without_a_recorded_constructor() -> None:
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1)).eval()
    x = torch.rand(2, 3, 2, 2)
    blob = pack_model(plain, "variant 'v'", x)
    assert torch.equal(load_blob(blob)(x), plain(x))


def test_metrics_travel_by_import_name() -> None:
    assert function_ref(cosine_agreement, "metric") == ("dfcompress.prune._scores:cosine_agreement")
    with pytest.raises(DfcompressError, match=r"metric=<function .*<lambda>.*not a lambda"):
        function_ref(lambda a, b: 1.0, "metric")

    def inner(a: torch.Tensor, b: torch.Tensor) -> float:
        return 1.0

    with pytest.raises(DfcompressError, match="cannot be sent to Ray workers"):
        function_ref(inner, "metric")
