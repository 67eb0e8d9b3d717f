"""Layers that pad in their own forward, compressed, saved and loaded back bit-exactly.

The file names the layer's class and never its code: load keeps the layer that
the model's registered factory builds at the wrapper's path, and refuses the
file when that layer's class is not exactly the recorded one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from io_files import manifest_of, rewrite_manifest
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.quant import QuantLayer


class PadConv2d(nn.Conv2d):
    """TensorFlow-style "same" padding for a fixed image size, applied in forward."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, image: int = 16) -> None:
        super().__init__(cin, cout, k, stride, padding=0)
        total = max((-(-image // stride) - 1) * stride + k - image, 0)
        lo, hi = total // 2, total - total // 2
        self.pad = nn.ZeroPad2d((lo, hi, lo, hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation)


class PadNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = PadConv2d(3, width, 3, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.conv = PadConv2d(width, width, 3, image=8)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@dfc.register_factory
def pad_net(width: int = 8) -> nn.Module:
    return dfc.set_constructor(PadNet(width), pad_net, width=width)


X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _trained() -> nn.Module:
    torch.manual_seed(0)
    net = pad_net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize(("config", "action"), [("int8", "int8"), ("int4", "int4")])
def test_packed_model_loads_back_bit_exact(tmp_path: Path, config: str, action: str) -> None:
    q = dfc.quantize(_trained(), config, calibration=X, pack=True, progress=False)
    path = dfc.save(q, tmp_path / "q.safetensors")
    specs = {e["path"]: e["spec"] for e in manifest_of(path.read_bytes())["modules"]}
    assert specs["stem"]["own_forward"] == f"{__name__}:PadConv2d"
    back = dfc.load(path)
    assert isinstance(back.stem, QuantLayer) and type(back.stem.inner) is PadConv2d
    assert back.stem.weight_packed is not None and back.stem.inner.pad.padding == (0, 1, 0, 1)
    assert [(r.layer_type, r.action) for r in dfc.summary(back)] == [
        ("PadConv2d", action),
        ("PadConv2d", action),
        ("Linear", action),
    ]
    with torch.no_grad():
        assert torch.equal(back(X), q(X))


def test_cast_model_loads_back_bit_exact(tmp_path: Path) -> None:
    c = dfc.quantize(_trained(), "bf16", progress=False)
    back = dfc.load(dfc.save(c, tmp_path / "c.safetensors"))
    assert type(back.conv.inner) is PadConv2d
    with torch.no_grad():
        assert torch.equal(back(X), c(X))


@pytest.mark.parametrize(
    "ref",
    [
        "torch.nn.modules.conv:Conv2d",  # an allowed class, but not the one the factory builds
        f"{__name__}:PadConv2dX",
        "tabnanny:PadConv2d",  # a module this process never imported
        None,
    ],
)
def test_a_tampered_class_name_is_refused(tmp_path: Path, ref: str | None) -> None:
    q = dfc.quantize(_trained(), "int8", calibration=X, pack=True, progress=False)
    path = dfc.save(q, tmp_path / "q.safetensors")

    def tamper(manifest: dict[str, object]) -> None:
        for entry in manifest["modules"]:  # type: ignore[attr-defined]
            if entry["path"] == "conv":
                entry["spec"]["own_forward"] = ref

    rewrite_manifest(path, tamper)
    assert "tabnanny" not in sys.modules
    with pytest.raises(UnsafeFileError, match=r"module 'conv'.*own forward of"):
        dfc.load(path)
    assert "tabnanny" not in sys.modules  # compared as a name, never imported


def test_the_wrapper_must_not_replace_a_plain_layer(tmp_path: Path) -> None:
    """A spec claiming an own forward where the factory builds a plain nn.Linear."""
    q = dfc.quantize(_trained(), "int8", calibration=X, pack=True, progress=False)
    path = dfc.save(q, tmp_path / "q.safetensors")

    def tamper(manifest: dict[str, object]) -> None:
        for entry in manifest["modules"]:  # type: ignore[attr-defined]
            if entry["path"] == "fc":
                entry["spec"]["own_forward"] = "torch.nn.modules.linear:Linear"

    rewrite_manifest(path, tamper)
    with pytest.raises(UnsafeFileError, match=r"module 'fc'"):
        dfc.load(path)


def test_save_refuses_without_a_recorded_constructor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(PadConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    q = dfc.quantize(net, "int8", calibration=X, pack=True, progress=False)
    with pytest.raises(DfcompressError, match=r"own forward of .*PadConv2d.*set_constructor"):
        dfc.save(q, tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()
