"""timm's EfficientNet-B0 and MobileNetV3: int8 files of both targets agree with their eager models.

Needs the zoo extra (timm) and the runtimes; run by the ``zoo`` nox session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _deploy_nets import assert_int8_file_is_the_eager_model
from _xnnpack_nets import randomize_bn

import dfcompress

pytestmark = pytest.mark.zoo

_SUFFIX = {"xnnpack": "pte", "onnxruntime": "onnx"}


@pytest.mark.parametrize("target", ["xnnpack", "onnxruntime"])
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100"])
def test_timm_int8_file_computes_what_the_eager_model_computes(
    name: str, target: str, tmp_path: Path
) -> None:
    timm = pytest.importorskip("timm")
    pytest.importorskip("executorch" if target == "xnnpack" else "onnxruntime")
    torch.manual_seed(0)
    net = randomize_bn(timm.create_model(name, pretrained=False, num_classes=2)).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(16, 3, 64, 64, generator=g)
    test = torch.randn(24, 3, 64, 64, generator=g)
    q = dfcompress.quantize(net, "int8", calibration=calib, target=target, progress=False)
    # export runs the agreement check with its default floor and fails loudly below it
    art = dfcompress.export(q, tmp_path / f"{name}.{_SUFFIX[target]}", test)
    assert art.target == target
    eager = assert_int8_file_is_the_eager_model(net, q, art, test)
    assert torch.equal(art.run(test).argmax(1), eager.argmax(1))
