"""The demo's shipped detectors and the checkpoint files they come from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfcompress.data import loader, predict
from dfcompress.demo import (
    DEMO_BNEXT_SIZE,
    DEMO_SIZE,
    checkpoint_path,
    load_demo_bnext,
    load_demo_detector,
)
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import auc
from dfcompress.io import read_manifest
from dfcompress.models import BinaryConv2d


def test_the_demo_detector_is_real_sized_float_and_ready() -> None:
    net = load_demo_detector()
    assert sum(p.numel() for p in net.parameters()) >= 1_000_000
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not net.training
    assert not any(isinstance(m, BinaryConv2d) for m in net.modules())


def test_the_shipped_checkpoint_records_how_it_was_made() -> None:
    path = checkpoint_path()
    assert path.stat().st_size < 3_000_000  # float16 storage: about 2.5 MB
    meta = read_manifest(path)["metadata"]
    assert meta["size"] == DEMO_SIZE == 64
    assert 0.90 <= meta["test_auc"] <= 0.99  # useful, not saturated


def test_the_demo_detector_separates_the_proxy_task() -> None:
    net = load_demo_detector()
    p = predict(net, loader("val", size=DEMO_SIZE, n=200, batch_size=100), progress=False)
    assert auc(p.labels, p.scores) > 0.85


def test_the_bnext_checkpoint_still_ships_packed() -> None:
    packed = load_demo_bnext(unpack=False)
    assert any(isinstance(m, BinaryConv2d) and m.weight is None for m in packed.modules())
    x = torch.rand(2, 3, DEMO_BNEXT_SIZE, DEMO_BNEXT_SIZE)
    with torch.no_grad():
        assert torch.allclose(load_demo_bnext()(x), packed(x), rtol=1e-5, atol=1e-5)


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=r"run scripts/train_demo_detector\.py"):
        load_demo_detector(tmp_path / "none.safetensors")


def test_the_deployed_demo_ships_each_variant_to_the_runtime_that_keeps_it_small(
    tmp_path: Path,
) -> None:
    pytest.importorskip("executorch")
    from dfcompress.demo import run_demo

    recipes = ["q8", "q4", "q16", "p50"]
    report = run_demo(tmp_path / "demo", quick=True, recipes=recipes, progress=False)
    base, q8, q4, q16, p50 = (report.variant(n) for n in ("baseline", *recipes))
    ships = [v.deployed for v in (base, q8, q4, q16, p50)]
    assert all(d is not None for d in ships)
    # int8 runs as XNNPACK integers; 16-bit and sparse weights are stored small in ONNX
    # files; 4-bit weights have no phone kernels: TorchScript
    assert [d.target for d in ships if d is not None] == [
        "xnnpack",
        "xnnpack",
        "torchscript",
        "onnxruntime",
        "onnxruntime",
    ]
    # the files, not the eager models
    assert q8.size_bytes < 0.35 * base.size_bytes
    assert q4.size_bytes < 0.25 * base.size_bytes
    assert q16.size_bytes < 0.55 * base.size_bytes
    assert p50.size_bytes <= 0.60 * base.size_bytes  # zeros stored sparse
    assert q8.deployed is not None and q8.deployed.agreement is not None
    assert q8.deployed.agreement.passed
    # the float model in ONNX Runtime too, so the runtime's own speed is in the table
    ort = report.variant("baseline-ort").deployed
    assert ort is not None and ort.target == "onnxruntime"
    assert (tmp_path / "demo" / "report.html").is_file()
