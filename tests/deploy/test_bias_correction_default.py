"""The targets' default bias correction: on for depthwise networks from real data only."""

from __future__ import annotations

import pytest
import torch
from _deploy_nets import wide_depthwise
from torch import nn

import dfcompress

G = torch.Generator().manual_seed(5)
CALIB = torch.randn(16, 16, 12, 12, generator=G) + 0.5
TEST = torch.randn(8, 16, 12, 12, generator=G) + 0.5


def _dense() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()


def _outputs(net: nn.Module, target: str, **kw: object) -> torch.Tensor:
    q = dfcompress.quantize(net, "int8", target=target, progress=False, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        return q(TEST)


@pytest.mark.parametrize("target", ["xnnpack", "onnxruntime"])
def test_target_default_corrects_depthwise_networks_only(target: str) -> None:
    if target == "xnnpack":
        pytest.importorskip("executorch")
    else:
        pytest.importorskip("onnxruntime")
    dw = wide_depthwise()
    auto = _outputs(dw, target, calibration=CALIB)
    assert torch.equal(auto, _outputs(dw, target, calibration=CALIB, bias_correction=True))
    assert not torch.equal(auto, _outputs(dw, target, calibration=CALIB, bias_correction=False))
    dense = _dense()
    auto = _outputs(dense, target, calibration=CALIB)
    assert torch.equal(auto, _outputs(dense, target, calibration=CALIB, bias_correction=False))
    assert not torch.equal(auto, _outputs(dense, target, calibration=CALIB, bias_correction=True))


def test_xnnpack_default_skips_correction_for_synthesized_data_and_qat() -> None:
    pytest.importorskip("executorch")
    kw = {"target": "xnnpack", "progress": False}
    torch.manual_seed(2)
    with_bn = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
    ).eval()
    bare = dfcompress.quantize(with_bn, "int8", input_shape=(16, 12, 12), **kw)  # type: ignore[arg-type]
    assert bare.details["bias_corrected_layers"] == 0  # type: ignore[index]
    dw = wide_depthwise()

    def untouched(model: nn.Module, step: int) -> None:
        pass

    qat = dfcompress.quantize(dw, "int8", calibration=CALIB, finetune=untouched, **kw)  # type: ignore[arg-type]
    assert qat.details["bias_corrected_layers"] == 0  # type: ignore[index]
    ptq = dfcompress.quantize(dw, "int8", calibration=CALIB, **kw)  # type: ignore[arg-type]
    assert ptq.details["bias_corrected_layers"] == 2  # type: ignore[index]
