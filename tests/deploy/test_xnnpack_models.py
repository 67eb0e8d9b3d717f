"""Eager equals deployed: int8 models for XNNPACK agree with their .pte files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _deploy_nets import assert_int8_file_is_the_eager_model
from _xnnpack_nets import TinyViT, randomize_bn, se_silu_net
from torch import nn

pytest.importorskip("executorch")

import dfcompress
from dfcompress import models


def _bnext() -> nn.Module:
    # BNext-tiny's blocks (binary convs, SE, stem and head) at a width CI can afford.
    torch.manual_seed(0)
    return randomize_bn(models.BNext((16, 32, 64, 64), num_classes=1))


def _mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(models.MobileNetV2(num_classes=2))


# The ResNet-like net's case runs in test_xnnpack_export, on the file its other tests share.
NETS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "se_silu": (se_silu_net, 32),
    "vit": (TinyViT, 32),
    "mobilenet_v2": (_mobilenet, 32),
    "bnext": (_bnext, 32),
}


@pytest.mark.parametrize("name", list(NETS))
def test_int8_file_computes_what_the_eager_model_computes(name: str, tmp_path: Path) -> None:
    build, side = NETS[name]
    net = build()
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(16, 3, side, side, generator=g)
    test = torch.randn(24, 3, side, side, generator=g)
    q = dfcompress.quantize(net, "int8", calibration=calib, target="xnnpack", progress=False)
    art = dfcompress.export(q, tmp_path / f"{name}.pte", test)
    assert art.target == "xnnpack" and art.details["quantized"]
    assert art.details["delegated_ops"] > 0
    assert_int8_file_is_the_eager_model(net, q, art, test)
