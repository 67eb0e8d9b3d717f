"""EfficientNet B0-B7: timm's layout and sizes, tracing, save/load, bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

import dfcompress as dfc
from dfcompress.data.detectors import npr_efficientnet
from dfcompress.errors import DfcompressError
from dfcompress.models import EfficientNet, efficientnet
from dfcompress.models.efficientnet import VARIANTS, efficientnet_b0
from dfcompress.select import preset

# Names timm's efficientnet_b0 state dict uses (a sample from every kind of part).
TIMM_NAMES = {
    "conv_stem.weight",
    "bn1.running_var",
    "blocks.0.0.conv_dw.weight",  # depthwise-separable block: no expansion
    "blocks.0.0.bn1.num_batches_tracked",
    "blocks.0.0.se.conv_reduce.weight",
    "blocks.0.0.se.conv_expand.bias",
    "blocks.0.0.conv_pw.weight",
    "blocks.0.0.bn2.bias",
    "blocks.1.0.conv_pw.weight",  # inverted residual: expand, depthwise, SE, project
    "blocks.1.0.bn1.weight",
    "blocks.1.0.conv_dw.weight",
    "blocks.1.0.bn2.running_mean",
    "blocks.1.0.se.conv_reduce.bias",
    "blocks.1.0.conv_pwl.weight",
    "blocks.1.0.bn3.weight",
    "blocks.6.0.bn3.running_var",
    "conv_head.weight",
    "bn2.weight",
    "classifier.weight",
    "classifier.bias",
}

# Published parameter counts at 1000 classes (the paper's Table 2 and timm's).
PUBLISHED = {"b0": 5_288_548, "b1": 7_794_184, "b3": 12_233_232, "b7": 66_347_960}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_sizes_are_the_published_ones(variant: str) -> None:
    with torch.device("meta"):
        net = efficientnet(variant)  # type: ignore[arg-type]
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED[variant]


def test_layout_is_timms() -> None:
    with torch.device("meta"):
        net = efficientnet("b0")
    state = net.state_dict()
    assert set(state) >= TIMM_NAMES
    assert len(state) == 360
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.kernel_size[0] for m in depthwise] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # SE hidden channels are a quarter of each block's input channels.
    ses = [m for n, m in net.named_modules() if n.endswith(".se")]
    assert [s.conv_reduce.out_channels for s in ses][:4] == [8, 4, 6, 6]
    assert sum(1 for m in net.modules() if getattr(m, "has_skip", False)) == 9


def test_forward_shapes_tracing_and_the_b0_shortcut() -> None:
    torch.manual_seed(0)
    net = efficientnet("b0", num_classes=3).eval()
    assert net.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    traced = torch.fx.symbolic_trace(net)  # BatchNorm folding and selectors trace it
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), net(x))
    again = efficientnet_b0(num_classes=3)
    assert again.dfc_constructor["kwargs"] == {"variant": "b0", "num_classes": 3, "in_channels": 3}
    assert set(VARIANTS) == {f"b{i}" for i in range(8)}


def test_the_se_layers_are_found_by_the_se_preset() -> None:
    net = efficientnet("b0", num_classes=1)
    names = set(preset("se").resolve(net))
    assert len(names) == 2 * 16  # conv_reduce and conv_expand of every block
    assert all(".se.conv_" in n for n in names)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "b9"}, "variant='b9' is not an EfficientNet"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"num_classes": True}, "num_classes=True"),
        ({"in_channels": 2.5}, r"in_channels=2\.5"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        efficientnet(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0.0}, "width=0.0 is out of range: use a positive number"),
        ({"depth": "1"}, "depth='1'"),
        ({"dropout": 1.0}, r"dropout=1\.0 is out of range"),
    ],
)
def test_bad_multipliers_name_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        EfficientNet(**kwargs)  # type: ignore[arg-type]


def test_save_and_load_rebuild_the_detector(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = npr_efficientnet("b0").eval()
    path = dfc.save(net, tmp_path / "e.safetensors")
    again = dfc.load(path).eval()
    assert isinstance(again[1], EfficientNet)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


@pytest.mark.zoo
@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_timms_weights_load_strictly_and_compute_the_same(variant: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model(f"efficientnet_{variant}", pretrained=False, num_classes=5).eval()
    for m in ref.modules():  # statistics of a trained network, not the initial ones
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = efficientnet(variant, num_classes=5).eval()  # type: ignore[arg-type]
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
