"""Modules compression adds (the onnxruntime target's operator quantizers) in saved files.

Load adds such a module only under its own child name and never to a container,
whose forward would call it: a file cannot put a module anywhere else.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from io_files import rewrite_manifest

import dfcompress as dfc
from dfcompress.errors import UnsafeFileError
from dfcompress.models.resnet import se_resnet

pytest.importorskip("onnxruntime")


def _saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    net = se_resnet((8, 16), num_classes=1).eval()
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    return dfc.save(q, tmp_path / "q.safetensors"), x


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("stages.dfc_round", r"adds module 'stages.dfc_round' to a container"),
        ("stages.0.other", r"names module 'stages.0.other', which the model lacks"),
        ("stages.9.dfc_round", r"names module 'stages.9.dfc_round', which the model lacks"),
    ],
)
def test_an_added_module_moved_elsewhere_is_refused(
    tmp_path: Path, path: str, refusal: str
) -> None:
    saved, _ = _saved(tmp_path)

    def move(manifest: dict[str, object]) -> None:
        entries = [e for e in manifest["modules"] if e["path"].endswith("dfc_round")]  # type: ignore[attr-defined]
        assert entries
        entries[0]["path"] = path

    rewrite_manifest(saved, move)
    with pytest.raises(UnsafeFileError, match=refusal):
        dfc.load(saved)


def test_the_untouched_file_loads(tmp_path: Path) -> None:
    saved, x = _saved(tmp_path)
    back = dfc.load(saved)
    assert any(n.endswith("dfc_round") for n, _ in back.named_modules())
    with torch.no_grad():
        assert back(x).shape == (8, 1)
