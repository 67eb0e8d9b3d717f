"""widen_stem and FeatureStack: exact RGB preservation, initialisation, errors, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress._rebuild import get_constructor
from dfcompress.errors import DfcompressError
from dfcompress.features import NPR, FeatureStack, MagnitudeSpectrum, PhaseSpectrum, widen_stem
from dfcompress.models import BNext, bnext


class TinyResNet(nn.Module):
    """A torchvision-free ResNet-like net: stem conv/BN/ReLU/maxpool, two residual blocks."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.block1 = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = x + self.block2(x)
        return self.fc(x.mean(dim=(2, 3)))


@settings(max_examples=15)
@given(
    st.integers(1, 5),
    st.sampled_from(["mean", "zeros"]),
    st.integers(0, 2**31 - 1),
)
def test_zero_extra_channels_reproduce_resnet_exactly(extra: int, init: str, seed: int) -> None:
    torch.manual_seed(seed)
    net = TinyResNet().eval()
    wide = widen_stem(net, extra, init)  # type: ignore[arg-type]
    x = torch.rand(2, 3, 24, 24)
    padded = torch.cat([x, torch.zeros(2, extra, 24, 24)], dim=1)
    with torch.no_grad():
        assert torch.equal(wide(padded), net(x))
    assert net.stem[0].in_channels == 3  # the caller's model is untouched
    assert wide.stem[0].in_channels == 3 + extra


def test_zero_extra_channels_reproduce_bnext_exactly() -> None:
    torch.manual_seed(0)
    net = bnext("tiny").eval()
    wide = widen_stem(net, 2)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(wide(torch.cat([x, torch.zeros(1, 2, 32, 32)], 1)), net(x))
    ctor = get_constructor(wide)
    assert ctor is not None and ctor["kwargs"]["in_chans"] == 5
    assert get_constructor(net)["kwargs"]["in_chans"] == 3  # type: ignore[index]


def test_mean_init_is_the_rescaled_rgb_mean() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=True)
    wide = widen_stem(nn.Sequential(conv), 2)[0]
    assert isinstance(wide, nn.Conv2d)
    mean = conv.weight.detach().mean(dim=1)
    for c in (3, 4):
        torch.testing.assert_close(wide.weight[:, c].detach(), mean * 3 / 5)
    assert torch.equal(wide.bias.detach(), conv.bias.detach())  # type: ignore[union-attr]


def test_zeros_init_ignores_the_extra_channels() -> None:
    net = TinyResNet().eval()
    wide = widen_stem(net, 3, "zeros")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(wide(torch.cat([x, torch.rand(1, 3, 16, 16)], 1)), net(x))


def test_inplace_widens_the_given_model() -> None:
    net = TinyResNet()
    assert widen_stem(net, 1, inplace=True) is net
    assert net.stem[0].in_channels == 4


def test_widen_stem_errors() -> None:
    with pytest.raises(DfcompressError, match="extra_channels=0"):
        widen_stem(TinyResNet(), 0)
    with pytest.raises(DfcompressError, match="init='random'"):
        widen_stem(TinyResNet(), 1, "random")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match=r"groups=1 nn\.Conv2d.*'0'"):
        widen_stem(nn.Sequential(nn.Linear(3, 2)), 1)
    with pytest.raises(DfcompressError, match="groups=1"):
        widen_stem(nn.Sequential(nn.Conv2d(3, 3, 3, groups=3)), 1)


def test_feature_stack_channels_and_crop() -> None:
    stack = FeatureStack([NPR(), PhaseSpectrum(), MagnitudeSpectrum()])
    assert stack.out_channels == 3 + 3 + 1 + 1
    x = torch.rand(2, 3, 15, 17)
    out = stack(x)
    assert out.shape == (2, stack.out_channels, 14, 16)  # NPR crops odd sizes
    torch.testing.assert_close(out[:, :3], x[:, :, :14, :16])
    torch.testing.assert_close(out[:, 3:6], NPR()(x))
    torch.testing.assert_close(out[:, 6:7], PhaseSpectrum()(x)[..., :14, :16])
    no_rgb = FeatureStack([PhaseSpectrum()], include_rgb=False)
    assert no_rgb.out_channels == 1 and no_rgb(x).shape == (2, 1, 15, 17)


def test_feature_stack_errors() -> None:
    with pytest.raises(DfcompressError, match="produce nothing"):
        FeatureStack([], include_rgb=False)
    with pytest.raises(DfcompressError, match="output_channels"):
        FeatureStack([nn.Identity()])
    with pytest.raises(DfcompressError, match=r"\[1, 4, 8, 8\]"):
        FeatureStack([NPR()])(torch.rand(1, 4, 8, 8))


def test_stacked_features_feed_a_widened_bnext() -> None:
    stack = FeatureStack([NPR(scale=2 / 3), PhaseSpectrum()])
    net = widen_stem(BNext((8, 16, 32)), stack.out_channels - 3).eval()
    with torch.no_grad():
        assert net(stack(torch.rand(1, 3, 32, 32))).shape == (1, 1)


def test_feature_stack_torchscript_and_onnx(tmp_path: pytest.TempPathFactory) -> None:
    stack = FeatureStack([NPR(pixel="max"), PhaseSpectrum(), MagnitudeSpectrum()])
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(torch.jit.script(stack)(x), stack(x))
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = str(tmp_path / "stack.onnx")  # type: ignore[operator]
    torch.onnx.export(stack, (x,), path, dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(path).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, stack(x).numpy(), atol=1e-3)
