"""The reference NPR + BNext detector of the proxy task."""

from __future__ import annotations

import torch

from dfcompress._rebuild import get_constructor
from dfcompress.data.detectors import npr_bnext
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
