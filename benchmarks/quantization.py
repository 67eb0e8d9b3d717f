"""Quantization benchmark: AUC, file size, eager latency and calibration cost per variant.

    python benchmarks/quantization.py                     # baselines found, else a small CNN
    python benchmarks/quantization.py --models cnn,bnext  # pick what to run

Baselines come from ``benchmarks/train_baselines.py`` checkpoints
(``~/.cache/dfcompress/baselines/<name>.safetensors``). When a checkpoint is
missing, ``cnn`` (a small conv/BN detector trained here on the proxy task in
about a minute) stands in; ``bnext`` is trained here only when asked with
``--train-bnext``, since BNext is slow on a CPU.

Rows: fp16, bf16, int8 (per-channel weights + calibrated uint8 activations),
int4 weight-only in groups of 32 and 128, and for BNext the I-SE-O presets
8-32-8, 8-8-8 and 8-4-8. Integer variants are saved packed (``pack=True``).
The table is printed and written to the "quantization" section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dfcompress.io as dio
from _results import latency_ratio, machine_line, markdown_table, update_section
from dfcompress.data import loader, predict, train_detector
from dfcompress.evaluate.metrics import auc
from dfcompress.models import pack_binary
from dfcompress.presets import ise
from dfcompress.prune.distill import distill_finetune
from dfcompress.quant import IntQuant, PerChannel, PerGroup, Quantizer, QuantLayer, Rule
from dfcompress.quant.config import Config, resolve_config

BASELINES = Path.home() / ".cache" / "dfcompress" / "baselines"
TARGETS = {"fp16": 0.001, "bf16": 0.001, "int8": 0.005, "int4": 0.01, "ise 8-4-8": 0.005}
FILE_TARGETS = {"fp16": 0.51, "bf16": 0.51, "int8": 0.26, "int4": 0.15}


class SmallDetector(nn.Module):
    """A small conv/BN detector (depthwise-separable blocks, one logit; 0.7M parameters)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            *block(32, 64, 2),
            *block(64, 128, 2),
            *block(128, 256, 2),
            *block(256, 512, 1),
            *block(512, 1024, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


QAT = "int8 + QAT"


def variants(name: str, qat: bool) -> list[tuple[str, Config | list[Rule]]]:
    rows: list[tuple[str, Config | list[Rule]]] = [
        ("fp16", resolve_config("fp16")),
        ("bf16", resolve_config("bf16")),
        ("int8", resolve_config("int8")),
        *([(QAT, resolve_config("int8"))] if qat else []),
        ("int4 g32", IntQuant(4, PerGroup(32, fallback=PerChannel(0)))),
        ("int4 g128", IntQuant(4, PerGroup(128, fallback=PerChannel(0)))),
    ]
    if name == "bnext":
        rows += [
            (f"ise {i}-{s}-{o}", ise(i, s, o)) for i, s, o in [(8, 32, 8), (8, 8, 8), (8, 4, 8)]
        ]
    return rows


def file_bytes(model: nn.Module, folder: Path, tag: str) -> int:
    return dio.save(model, folder / f"{tag}.safetensors").stat().st_size


def float_pass(model: nn.Module, batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model(b)
    return time.perf_counter() - t0


def test_auc(model: nn.Module, test: Any) -> float:
    p = predict(model, test, progress=False)
    return auc(p.labels, p.scores)


def baseline(name: str, args: argparse.Namespace, train: Any) -> tuple[nn.Module, str]:
    path = BASELINES / f"{name if name != 'cnn' else 'none'}.safetensors"
    if path.exists():
        return dio.load(path, allow=["timm"]).eval(), f"checkpoint {path.name}"
    if name == "bnext" and not args.train_bnext:
        raise SystemExit(f"no BNext checkpoint at {path}: run train_baselines.py or --train-bnext")
    if name == "bnext":
        from dfcompress.data.detectors import npr_bnext

        model: nn.Module = npr_bnext("tiny")
    else:
        torch.manual_seed(args.seed)
        model = SmallDetector()
    t0 = time.perf_counter()
    model = train_detector(model, train, epochs=args.epochs, progress=not args.quiet)
    return model.eval(), f"trained here ({time.perf_counter() - t0:.0f} s)"


qat_seconds: dict[str, float] = {}


def run(
    name: str, args: argparse.Namespace, train: Any, test: Any, calib: torch.Tensor
) -> list[list[Any]]:
    model, origin = baseline(name, args, train)
    print(f"{name}: {origin}")
    x = calib[: args.latency_batch]
    base_auc = test_auc(model, test)
    tmp = Path(tempfile.mkdtemp())
    base_bytes = file_bytes(model, tmp, "float")
    batches = [calib[i : i + 32] for i in range(0, len(calib), 32)]
    rows: list[list[Any]] = [
        [name, "float32", f"{base_auc:.4f}", "", f"{base_bytes / 1e6:.2f}", "1.000", "1.00", "", ""]
    ]
    if name == "bnext":
        b1 = file_bytes(pack_binary(model), tmp, "float-binary1bit")
        rows.append(
            [
                name,
                "float32, binary 1 bit",
                f"{base_auc:.4f}",
                "",
                f"{b1 / 1e6:.2f}",
                f"{b1 / base_bytes:.3f}",
                "",
                "",
                "",
            ]
        )
    for label, cfg in variants(name, args.qat_epochs > 0):
        rules: list[Rule] = cfg if isinstance(cfg, list) else [("all", cfg)]
        qz = Quantizer(rules)
        prepared = qz.prepare(model)
        needs_calib = any(
            isinstance(m, QuantLayer) and m.input_quant is not None for m in prepared.modules()
        )
        one_pass = float_pass(model, batches)
        t0 = time.perf_counter()
        qz.calibrate(prepared, batches, progress=False)
        calib_s = time.perf_counter() - t0
        if label == QAT:
            t0 = time.perf_counter()
            finetune = distill_finetune(
                model, train, epochs=args.qat_epochs, lr=args.qat_lr, alpha=1.0, progress=False
            )
            finetune(prepared, 0)
            prepared.eval()
            qat_seconds[name] = time.perf_counter() - t0
        q = qz.convert(prepared)
        q_auc = test_auc(q, test)
        lat = latency_ratio(q, model, x, args.repeats)
        stored = qz.convert(prepared, pack=not label.startswith(("fp", "bf")))
        if name == "bnext":
            stored = pack_binary(stored)  # binary convolutions at 1 bit per weight
        size = file_bytes(stored, tmp, label)
        diff = q_auc - base_auc
        key = "int4" if label.startswith("int4") else "int8" if label == QAT else label
        ok_auc = "yes" if key not in TARGETS or -diff <= TARGETS[key] else "NO"
        ratio = size / base_bytes
        ok_file = "yes" if key not in FILE_TARGETS or ratio <= FILE_TARGETS[key] else "NO"
        rows.append(
            [
                name,
                label,
                f"{q_auc:.4f}",
                f"{diff:+.4f} ({ok_auc})",
                f"{size / 1e6:.2f}",
                f"{ratio:.3f} ({ok_file})",
                f"{lat:.2f}",
                f"{calib_s:.2f}" if needs_calib else "none needed",
                f"{calib_s / one_pass:.2f}" if needs_calib else "",
            ]
        )
        print(" | ".join(str(v) for v in rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", default="cnn,bnext", help="comma-separated: cnn, bnext, efficientnet_b0"
    )
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-calib", type=int, default=256)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-bnext", action="store_true")
    p.add_argument(
        "--qat-epochs", type=float, default=1.0, help="int8 + QAT distillation epochs (0: no row)"
    )
    p.add_argument("--qat-lr", type=float, default=3e-5, help="int8 + QAT peak learning rate")
    p.add_argument("--section", default="quantization", help="RESULTS.md section to write")
    p.add_argument("--no-results", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = loader("train", size=args.size, n=args.n_train, batch_size=32, seed=args.seed)
    test = loader("test", size=args.size, n=args.n_test, batch_size=100, seed=args.seed)
    calib = torch.cat(
        [b[0] for b in loader("val", size=args.size, n=args.n_calib, batch_size=64, seed=args.seed)]
    )
    rows: list[list[Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            rows += run(name, args, train, test, calib)
        except SystemExit as e:
            print(f"skipping {name}: {e}")
            rows.append([name, f"skipped: {e}", "", "", "", "", "", "", ""])
    headers = [
        "model",
        "variant",
        "test AUC",
        "diff vs float (target met)",
        "file MB",
        "file ratio (target met)",
        "eager latency x float",
        "calibration s",
        "calibration x float pass",
    ]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_results:
        notes = (
            f"Proxy task at {args.size}x{args.size} px, {args.n_train} training and {args.n_test} "
            f"test samples, {args.n_calib} calibration samples (val split). `cnn` is "
            "`SmallDetector` (0.72M parameters, depthwise-separable conv/BN blocks), trained "
            f"here for {args.epochs} epochs as a stand-in; `bnext` and `efficientnet_b0` are the "
            "checkpoints from benchmarks/train_baselines.py (NPR front end + BNext-tiny / "
            "EfficientNet-B0). BNext's binary convolutions hold almost all its weights and are "
            "not conv/linear layers, so fp16/int8/int4 and I-SE-O change only its stem, SE, "
            "downsampling and head layers; every BNext file here stores the binary "
            "convolutions at 1 bit per weight (dfcompress.models.pack_binary), and its ratios "
            "are against the float32 checkpoint file with latent float binary weights (row "
            "'float32, binary 1 bit' shows the float model with only that packing). "
            "The int8 rows use the named 'int8' config: per-channel int8 weights, per-tensor "
            "uint8 activations after activation equalization (smoothing=0.8); BatchNorm is "
            "folded into the preceding conv for integer and fp16/bf16 variants. "
            + (
                f"'{QAT}' is the same int8 model trained after calibration, before it is "
                f"frozen (quantize(..., finetune=distill_finetune(...))): {args.qat_epochs:g} "
                f"epoch of distillation from the float model over the {args.n_train} training "
                f"images (alpha=1: the float model's outputs only, no labels; AdamW, peak lr "
                f"{args.qat_lr:g}, cosine), activation ranges as calibrated; it took "
                + ", ".join(f"{k}: {v:.0f} s" for k, v in qat_seconds.items())
                + ". "
                if qat_seconds
                else ""
            )
            + "Targets apply to it as to int8. "
            f"Latency: median of {args.repeats} eager forwards of a batch of "
            f"{args.latency_batch}, interleaved with the float model ({args.threads} thread); "
            "it is the fake-quant model on float kernels (real int8 kernels come from the ONNX "
            "export), and fp16/bf16 run PyTorch's CPU half-precision kernels, which are slow "
            "on this CPU. File sizes are `dfcompress.save` files with packed integer weights, "
            "including the safetensors header and the compressed manifest. "
            "Targets: AUC drop fp16/bf16 <= 0.001, int8 <= 0.005, "
            "int4 <= 0.01, I-SE-O 8-4-8 <= 0.005; file ratio fp16 <= 0.51, int8 <= 0.26, "
            "int4 <= 0.15; fake-quant eager forward <= 1.5x float; calibration of 256 images "
            "<= 2x one float pass."
        )
        title = "Quantization" + ("" if args.section == "quantization" else f" ({args.models})")
        update_section(args.section, f"## {title}\n\n{table}\n\n{notes}\n\n{machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
