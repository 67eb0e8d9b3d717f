"""A model quantized for a target keeps it through save and load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from io_files import manifest_of, rewrite_manifest
from torch import nn

import dfcompress as dfc
from dfcompress.errors import UnsafeFileError

pytest.importorskip("onnxruntime")


def _made_for_onnxruntime(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(8, 3, 8, 8)
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    return dfc.save(q, tmp_path / "q.safetensors")


def test_the_target_survives_save_and_load(tmp_path: Path) -> None:
    path = _made_for_onnxruntime(tmp_path)
    assert manifest_of(path.read_bytes())["target"] == "onnxruntime"
    loaded = dfc.load(path)
    assert loaded.dfc_target == "onnxruntime"
    # so export writes it for its runtime, not with the plain exporter's defaults
    art = dfc.export(loaded, tmp_path / "q.onnx", torch.randn(2, 3, 8, 8))
    assert art.target == "onnxruntime"


def test_an_unknown_target_in_the_file_is_refused(tmp_path: Path) -> None:
    path = _made_for_onnxruntime(tmp_path)
    rewrite_manifest(path, lambda m: m.update(target="tensorrt"))
    with pytest.raises(UnsafeFileError, match="target 'tensorrt'"):
        dfc.load(path)
