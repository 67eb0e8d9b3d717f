"""timm backbones through save/load: float, pruned-sparse, int8 and int4 packed (zoo extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dfcompress as dfc

pytestmark = pytest.mark.zoo

MODELS = {
    "efficientnet_b0": {},
    "mobilenetv3_small_100": {},
    "resnet18": {},
    "tf_efficientnet_b0": {},  # Conv2dSame: pads in its own forward
    "vit_tiny_patch16_224": {"img_size": 64},
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("variant", ["float", "p50", "int8", "int4"])
def test_timm_round_trip_is_bit_exact(name: str, variant: str, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    ctor = {"model_name": name, "num_classes": 2, **MODELS[name]}
    net = timm.create_model(pretrained=False, **ctor).eval()
    dfc.set_constructor(net, "timm:create_model", **ctor)
    x = torch.rand(4, 3, 64, 64)
    if variant == "p50":
        net = dfc.prune(net, amount=0.5, progress=False)
    elif variant == "int8":
        net = dfc.quantize(net, "int8", calibration=x, pack=True, progress=False)
    elif variant == "int4":
        net = dfc.quantize(net, "int4", pack=True, progress=False)
    path = dfc.save(net, tmp_path / f"{name}-{variant}.safetensors")
    with pytest.raises(dfc.DfcompressError, match="timm"):
        dfc.load(path)  # timm is not allowed unless the caller says so
    back = dfc.load(path, allow=["timm"])
    with torch.no_grad():
        assert torch.equal(back(x), net.eval()(x))
    if variant == "p50":  # the zeros show in the file
        float_net = timm.create_model(pretrained=False, **ctor)
        dfc.set_constructor(float_net, "timm:create_model", **ctor)
        dense = dfc.save(float_net, tmp_path / "dense.safetensors")
        assert path.stat().st_size < 0.75 * dense.stat().st_size
