"""Grad-CAM: log-odds target, confident samples, localization, and no trace left on the model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.evaluate.gradcam import default_target_layer, fake_logodds, grad_cam


class Detector(nn.Module):
    """conv -> relu -> (an SE-like 1x1 branch) -> pool -> linear, with a huge head gain."""

    def __init__(self, n_logits: int, gain: float = 1000.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, n_logits)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for c in range(3):
                self.conv.weight[c, c, 1, 1] = 1.0  # channel c copies input channel c
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[-1, 0] = gain  # the red channel is evidence of "fake"
        self.bn = nn.BatchNorm1d(4)  # unused; its training flag must survive grad_cam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv(x))
        a = a * self.se(a)
        return self.head(self.pool(a).flatten(1))


def _patch_images(n: int = 2) -> torch.Tensor:
    x = torch.zeros(n, 3, 16, 16)
    x[:, 0, 2:6, 9:13] = 1.0  # a red patch, top right
    x[:, 1] = 0.2
    return x


@pytest.mark.parametrize("n_logits", [1, 2])
def test_confident_samples_give_nonzero_localized_maps(n_logits: int) -> None:
    model = Detector(n_logits)
    x = _patch_images()
    with torch.no_grad():
        out = model(x)
        p_fake = torch.sigmoid(fake_logodds(out))
    assert bool((p_fake == 1.0).all())  # saturated: a softmax target would be useless
    cam = grad_cam(model, x)
    assert cam.layer == "act"
    assert cam.maps.shape == (2, 16, 16)
    assert not bool(cam.flat.any())
    assert float(cam.maps.max()) == pytest.approx(1.0)
    # the evidence is where the red patch is
    inside = cam.maps[:, 2:6, 9:13].mean()
    outside = cam.maps[:, 10:, :6].mean()
    assert float(inside) > 0.9 and float(outside) < 0.1
    assert torch.allclose(cam.target, fake_logodds(out))


def test_no_evidence_is_reported_flat_not_noise() -> None:
    model = Detector(1)
    x = torch.zeros(2, 3, 16, 16)
    x[1, 0, :4, :4] = 1.0
    cam = grad_cam(model, x)
    assert cam.flat.tolist() == [True, False]
    assert float(cam.maps[0].abs().max()) == 0.0


def test_model_is_left_untouched() -> None:
    model = Detector(2)
    model.train()
    model.conv.eval()
    model.head.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    grad_cam(model, _patch_images(), target_layer="conv")
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert model.training and not model.conv.training and model.bn.training
    assert not model.head.weight.requires_grad and model.conv.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_default_layer_skips_one_by_one_branches() -> None:
    model = Detector(1)
    assert default_target_layer(model, _patch_images()) == "act"


def test_layer_by_module_and_class_target_and_errors() -> None:
    model = Detector(2)
    x = _patch_images()
    by_module = grad_cam(model, x, target_layer=model.conv)
    assert by_module.layer == "conv"
    by_class = grad_cam(model, x, target=1)
    assert not bool(by_class.flat.any())
    with pytest.raises(DfcompressError, match="'nope' is not a module"):
        grad_cam(model, x, target_layer="nope")
    with pytest.raises(DfcompressError, match="did not produce a 4-D"):
        grad_cam(model, x, target_layer="head")
    with pytest.raises(DfcompressError, match="target=5"):
        grad_cam(model, x, target=5)
    with pytest.raises(DfcompressError, match=r"\[N\], \[N, 1\] or \[N, 2\]"):
        grad_cam(Detector(3), x)
    assert all(not m._forward_hooks for m in model.modules())
