"""The reference NPR + BNext detector of the proxy task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dfcompress as dfc
from dfcompress._rebuild import get_constructor
from dfcompress.data.detectors import npr_bnext, npr_timm
from dfcompress.errors import MissingExtraError
from dfcompress.evaluate.gradcam import grad_cam
from dfcompress.features import NPR


def test_npr_bnext_structure_and_constructor() -> None:
    model = npr_bnext("tiny", num_classes=2)
    assert isinstance(model[0], NPR)
    assert get_constructor(model) == {
        "factory": "dfcompress.data.detectors:npr_bnext",
        "kwargs": {"variant": "tiny", "num_classes": 2},
    }
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def test_grad_cam_finds_the_last_feature_map_of_bnext() -> None:
    torch.manual_seed(0)
    model = npr_bnext("tiny")
    cam = grad_cam(model, torch.rand(2, 3, 64, 64))
    assert cam.layer == "1.head_act"
    assert cam.maps.shape == (2, 64, 64)
    assert not bool(cam.flat.all())


def test_npr_timm_needs_the_zoo_extra_or_round_trips(tmp_path: Path) -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match=r"dfcompress\[zoo\]"):
            npr_timm("efficientnet_b0")
        return
    model = npr_timm("efficientnet_b0").eval()
    assert isinstance(model[0], NPR)
    back = dfc.load(dfc.save(model, tmp_path / "e.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), back(x))
