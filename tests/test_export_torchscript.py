"""TorchScript export: reload and compare, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dfcompress.deploy import export_torchscript
from dfcompress.errors import DfcompressError
from test_export_onnx import resnet_like


@pytest.mark.parametrize("method", ["trace", "script"])
def test_round_trip_matches_eager(method: str, tmp_path: Path) -> None:
    net = resnet_like()
    x = torch.randn(3, 3, 16, 16)
    r = export_torchscript(net, tmp_path / "m.pt", x, method=method)  # type: ignore[arg-type]
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert r.file_bytes == (tmp_path / "m.pt").stat().st_size and r.agreement == 1.0


def test_half_model(tmp_path: Path) -> None:
    r = export_torchscript(resnet_like().half(), tmp_path / "m.pt", torch.randn(2, 3, 16, 16))
    assert r.kind == "16bit" and r.agreement == 1.0


class Unscriptable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * len({id(x)})  # set comprehension: not TorchScript


def test_script_failure_is_a_dfcompress_error(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match="cannot script Unscriptable"):
        export_torchscript(Unscriptable(), tmp_path / "m.pt", torch.randn(2), method="script")


def test_bad_method(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match="method='onnx'"):
        export_torchscript(resnet_like(), tmp_path / "m.pt", torch.randn(1), method="onnx")  # type: ignore[arg-type]


@pytest.mark.parametrize("config", ["int4", "int8"])
def test_packed_weights_stay_packed_in_the_file(config: str, tmp_path: Path) -> None:
    """A traced file stores the packed codes, not a float copy of the weights too."""
    from dfcompress import quantize

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.Flatten())
    x = torch.randn(4, 3, 12, 12)
    small = quantize(net, config, calibration=x, pack=True)
    with torch.no_grad():
        small(x)  # a warm weight cache must not end up in the file
    r_float = export_torchscript(net, tmp_path / "f.pt", x)
    r = export_torchscript(small, tmp_path / "q.pt", x)
    ratio = r.file_bytes / r_float.file_bytes
    assert ratio < (0.2 if config == "int4" else 0.32), ratio
    assert r.agreement == 1.0
