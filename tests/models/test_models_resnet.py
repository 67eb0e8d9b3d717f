"""The float SE-ResNet behind the demo detector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dfcompress as dfc
from dfcompress.data.detectors import npr_resnet
from dfcompress.errors import DfcompressError
from dfcompress.models.resnet import SEResNet, SqueezeExcite, se_resnet
from dfcompress.presets import ise


def test_default_widths_give_a_real_sized_detector_of_dense_convs() -> None:
    net = npr_resnet()
    assert sum(p.numel() for p in net.parameters()) == 1_238_177
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.groups == 1 and m.kernel_size in ((3, 3), (1, 1)) for m in convs)
    assert not any(isinstance(m, (nn.SiLU, nn.GELU, nn.Hardswish)) for m in net.modules())


@pytest.mark.parametrize("widths", [(8,), (8, 16), (8, 16, 16)])
def test_each_stage_after_the_first_halves_the_resolution(widths: tuple[int, ...]) -> None:
    net = se_resnet(widths).eval()
    feats = net.stages(net.stem(torch.rand(1, 3, 32, 32)))
    assert feats.shape == (
        1,
        widths[-1],
        16 // 2 ** (len(widths) - 1),
        16 // 2 ** (len(widths) - 1),
    )


def test_round_trips_through_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = npr_resnet((8, 16)).eval()
    x = torch.rand(2, 3, 32, 32)
    back = dfc.load(dfc.save(net, tmp_path / "r.safetensors"))
    assert torch.equal(back(x), net(x))


def test_ise_selects_the_stem_the_se_gates_and_the_head() -> None:
    net = npr_resnet((8, 16, 32))
    counts = ise(8, 4, 8).match(net)
    assert (counts.stem, counts.se, counts.head) == (1, 6, 1)
    assert sum(isinstance(m, SqueezeExcite) for m in net.modules()) == 3


@pytest.mark.parametrize(
    ("widths", "classes", "message"),
    [((), 1, r"widths=\[\] is invalid"), ((8, 0), 1, "widths="), ((8,), 0, "num_classes=0")],
)
def test_bad_arguments_are_refused(widths: tuple[int, ...], classes: int, message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        SEResNet(widths, classes)
