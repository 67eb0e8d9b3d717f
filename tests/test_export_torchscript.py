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
