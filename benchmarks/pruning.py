"""Pruning benchmark: AUC, saved size, MACs and latency of pruned detectors.

    python benchmarks/pruning.py                    # a baseline checkpoint if found, else a CNN
    python benchmarks/pruning.py --models cnn       # the small CNN trained here
    python benchmarks/pruning.py --models efficientnet_b0 --size 64 --n-train 2000 \\
        --section pruning-efficientnet_b0 --variants scan,structured   # part of the rows

Baselines come from ``benchmarks/train_baselines.py`` checkpoints
(``~/.cache/dfcompress/baselines/<name>.safetensors``); when none exists a
small residual CNN is trained here on the proxy task (about a minute).

Rows (groups for ``--variants``): ``l1``: p20 / p50 / p70 L1 global, with and
without sensitivity allocation (budget strategy, no fine-tune); ``scan``: the
sensitivity scan at 5 amounts over 256 images, timed, and p50 allocated from
it; ``iterative``: p50 reached in 3 cubic steps with a short fine-tune;
``structured``: s50 in one step with a short BCE fine-tune, and s50 in several
steps with distillation from the dense model after each; ``q8``: int8 after p50
with sensitivity. Files are written with ``dfcompress.save`` (sparse storage of
pruned weights; q8 packed). The table is printed and written to the section
``--section`` of ``benchmarks/RESULTS.md``; rows of groups not run are kept
from the section's previous table, so split runs merge.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dfcompress.io as dio
from _results import RESULTS, latency_ratio, machine_line, markdown_table, update_section
from dfcompress.data import loader, predict, train_detector
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.measure import count_macs
from dfcompress.evaluate.metrics import auc
from dfcompress.prune import Pruner, allocate, l1_unstructured, prune, scan, sparsity
from dfcompress.prune.distill import distill_finetune

BASELINES = Path.home() / ".cache" / "dfcompress" / "baselines"


class ResidualCNN(nn.Module):
    """A small residual conv/BN detector with one logit (about 0.3M parameters)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        w = width
        self.stem = cbr(3, w)
        self.block1 = nn.Sequential(cbr(w, w), cbr(w, w))
        self.down = cbr(w, 2 * w, 2)
        self.block2 = nn.Sequential(cbr(2 * w, 2 * w), cbr(2 * w, 2 * w))
        self.down2 = cbr(2 * w, 4 * w, 2)
        self.block3 = nn.Sequential(cbr(4 * w, 4 * w), cbr(4 * w, 4 * w))
        self.fc = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.down(x)
        x = x + self.block2(x)
        x = self.down2(x)
        x = x + self.block3(x)
        return self.fc(x.mean((2, 3)))


def short_finetune(train: Any, batches: int) -> Any:
    """A callback running ``batches`` AdamW steps with BCE on the proxy labels."""

    def finetune(model: nn.Module, step: int) -> None:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
        model.train()
        for i, (x, y, _names) in enumerate(train):
            if i >= batches:
                break
            opt.zero_grad()
            out = model(x).reshape(-1)
            nn.functional.binary_cross_entropy_with_logits(out, y.float()).backward()
            opt.step()
        model.eval()

    return finetune


def previous_rows(section: str) -> dict[str, list[str]]:
    """The rows of a section's table in RESULTS.md, by variant (to merge split runs)."""
    if not RESULTS.exists():
        return {}
    text = RESULTS.read_text()
    begin, end = f"<!-- begin:{section} -->", f"<!-- end:{section} -->"
    if begin not in text:
        return {}
    body = text.split(begin, 1)[1].split(end, 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("variant",) and len(cells) == len(HEADERS):
            rows[cells[0]] = cells
    return rows


HEADERS = [
    "variant",
    "test AUC",
    "diff",
    "file KB",
    "file ratio",
    "file ratio, binary packed",
    "MACs ratio",
    "latency ratio b1",
    "latency ratio b32",
    "scan s",
    "notes",
]
ORDER = [
    "baseline",
    "p20",
    "p20 sens",
    "p50",
    "p50 sens",
    "p70",
    "p70 sens",
    "scan 5x256",
    "p50 iterative",
    "s50 one-shot",
    "s50 KD",
    "q8-p50",
]
GROUPS = ("l1", "scan", "iterative", "structured", "q8")
INDEX = """## Pruning

The pruning figures are measured on the two trained baselines, each in its own section
below: `pruning-efficientnet_b0` (NPR + timm EfficientNet-B0 at 64 px, run under the zoo
environment) and `pruning-bnext` (NPR + BNext-tiny at 32 px). Targets: p50 L1 global with
sensitivity allocation and no fine-tune loses <= 0.01 AUC with a file <= 0.60 of dense;
s50 structured with a short fine-tune loses <= 0.02 AUC at <= 0.35x MACs and runs >= 1.8x
faster at batch 32; the efficientnet_b0 sensitivity scan at 5 amounts over 256 images
takes <= 5 minutes; q8-p50 loses <= 0.015 AUC with a file <= 0.16 of float32. Each
section states which were met."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="auto", help="'auto', 'cnn' or a baseline name (bnext)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--finetune-batches", type=int, default=15)
    p.add_argument("--kd-steps", type=int, default=3, help="structured pruning steps")
    p.add_argument("--kd-epochs", type=float, default=1.0, help="distillation epochs per step")
    p.add_argument("--kd-ignore", default="head,stem", help="layers kept whole by s50 KD")
    p.add_argument("--scan-samples", type=int, default=256)
    p.add_argument("--sens-samples", type=int, default=64, help="scan batch of the pN sens rows")
    p.add_argument(
        "--sens-grid", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="pN sens scan amounts"
    )
    p.add_argument("--stop-below", type=float, default=None, help="scan option (all scans)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps-b32", type=int, default=15, help="timing runs at batch 32")
    p.add_argument(
        "--variants", default=",".join(GROUPS), help=f"groups to run, from {','.join(GROUPS)}"
    )
    p.add_argument("--section", default="pruning", help="RESULTS.md section to write")
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = set(args.variants.split(","))
    if not groups <= set(GROUPS):
        p.error(f"--variants {args.variants!r}: use groups from {','.join(GROUPS)}")

    train = loader("train", size=args.size, n=args.n_train, batch_size=32, seed=0)
    test = loader("test", size=args.size, n=args.n_test, batch_size=100, seed=0)
    calib = torch.cat([x for x, _, _ in loader("val", size=args.size, n=64, batch_size=64)])

    name = args.models
    ckpt = BASELINES / f"{name if name != 'auto' else 'bnext'}.safetensors"
    if name != "cnn" and ckpt.exists():
        base = dio.load(ckpt).eval()
        source = f"checkpoint {ckpt.name}"
    else:
        if name not in ("auto", "cnn"):
            print(f"no checkpoint {ckpt}: training the small CNN instead")
        t0 = time.perf_counter()
        base = train_detector(ResidualCNN(), train, epochs=args.epochs, progress=False).eval()
        source = (
            f"ResidualCNN trained here ({args.epochs} epochs, {time.perf_counter() - t0:.0f} s)"
        )
    x1 = calib[:1]
    x32 = calib[:32]
    binary = any(type(m).__name__ == "BinaryConv2d" for m in base.modules())

    def evaluate(model: nn.Module) -> float:
        pred = predict(model, test, progress=False)
        return float(auc(pred.labels, pred.scores))

    def file_bytes(model: nn.Module, tag: str) -> int:
        # The bytes dio.save would write; no constructor needed just to count them.
        return dio.serialized_size(model)

    def packed_bytes(model: nn.Module, tag: str) -> int | None:
        if not binary:
            return None
        from dfcompress.models import pack_binary

        try:
            return file_bytes(pack_binary(model), f"{tag}-packed")
        except Exception as e:  # a quantized model may not pack
            print(f"{tag}: cannot pack binary layers: {type(e).__name__}: {e}")
            return None

    base_auc = evaluate(base)
    base_file = file_bytes(base, "base")
    base_packed = packed_bytes(base, "base")
    base_macs = count_macs(base, x1)
    rows: dict[str, list[Any]] = {}

    def record(tag: str, model: nn.Module, scan_s: float | None = None, note: str = "") -> None:
        a = evaluate(model)
        size = file_bytes(model, tag)
        packed = packed_bytes(model, tag)
        try:
            macs = f"{count_macs(model, x1) / base_macs:.3f}"
        except Exception:  # a quantized model may not run under the flop counter
            macs = "n/a"
        rows[tag] = [
            tag,
            f"{a:.4f}",
            f"{a - base_auc:+.4f}",
            f"{size / 1e3:.1f}",
            f"{size / base_file:.3f}",
            f"{packed / base_packed:.3f}" if packed and base_packed else "",
            macs,
            f"{latency_ratio(model, base, x1, 30):.2f}",
            f"{latency_ratio(model, base, x32, args.reps_b32):.2f}",
            "" if scan_s is None else f"{scan_s:.1f}",
            note,
        ]
        print(" | ".join(str(c) for c in rows[tag]), flush=True)

    record("baseline", base)
    sens_grid = tuple(float(a) for a in args.sens_grid.split(","))
    sens_x = calib[: args.sens_samples]
    sens_how = f"{sens_x.shape[0]} images x {len(sens_grid)} amounts" + (
        "" if args.stop_below is None else f", stop_below={args.stop_below}"
    )
    if "l1" in groups:
        t0 = time.perf_counter()
        res = scan(
            base,
            calibration=sens_x,
            amounts=sens_grid,
            n_samples=sens_x.shape[0],
            stop_below=args.stop_below,
            progress=False,
        )
        scan_s = time.perf_counter() - t0
        passes = f"{res.forward_passes} passes = {res.full_pass_equivalent:.0f} full-pass equiv."
        for amount in (0.2, 0.5, 0.7):
            tag = f"p{round(amount * 100)}"
            record(tag, prune(base, amount, progress=False), note="L1 global")
            try:
                chosen = allocate(res, amount).amounts
            except DfcompressError as e:
                print(f"{tag} sens: {e}")
                continue
            small = l1_unstructured(base, {n: a for n, a in chosen.items() if a > 0}, scope="local")
            record(
                f"{tag} sens",
                small,
                scan_s=scan_s,
                note=f"sparsity {sparsity(small):.3f}; one scan for the 3 targets: {sens_how}, "
                f"{passes}",
            )
    if "scan" in groups:
        scan_x = torch.cat(
            [x for x, _, _ in loader("val", size=args.size, n=args.scan_samples, batch_size=64)]
        )
        grid = (0.1, 0.3, 0.5, 0.7, 0.9)
        pruner = Pruner(
            amount=0.5,
            sensitivity=True,
            grid=grid,
            n_samples=args.scan_samples,
            stop_below=args.stop_below,
        )
        t0 = time.perf_counter()
        res = pruner.scan(base, calibration=scan_x, progress=False)
        scan_s = time.perf_counter() - t0
        small = l1_unstructured(
            base, {n: a for n, a in res.amounts.items() if a > 0}, scope="local"
        )
        stop = "" if args.stop_below is None else f", stop_below={args.stop_below}"
        record(
            "scan 5x256",
            small,
            scan_s=scan_s,
            note=(
                f"scan alone: {len(res.layers)} layers x {len(grid)} amounts over "
                f"{scan_x.shape[0]} images{stop}: {res.forward_passes} passes = "
                f"{res.full_pass_equivalent:.0f} full-pass equivalents; row = p50 allocated "
                "from it (budget), no fine-tune; target scan <= 300 s"
            ),
        )
    if "iterative" in groups:
        from dfcompress.prune import cubic

        ft = short_finetune(train, args.finetune_batches)
        record(
            "p50 iterative",
            prune(base, 0.5, steps=3, schedule=cubic, finetune=ft, progress=False),
            note=f"3 cubic steps, {args.finetune_batches} batches fine-tune each",
        )
    if "structured" in groups:
        ft = short_finetune(train, args.finetune_batches)
        small = prune(base, 0.5, method="structured", example_inputs=x1, progress=False)
        ft(small, 1)
        record(
            "s50 one-shot",
            small,
            note=f"L1 channels in one step, {args.finetune_batches} batches of BCE fine-tune",
        )
        seconds = [0.0]
        kd = distill_finetune(base, train, epochs=args.kd_epochs, lr=1e-3, progress=False)

        def timed(model: nn.Module, step: int) -> None:
            t = time.perf_counter()
            kd(model, step)
            seconds[0] += time.perf_counter() - t

        t0 = time.perf_counter()
        small = prune(
            base,
            0.5,
            method="structured",
            steps=args.kd_steps,
            importance="l2",
            ignore=args.kd_ignore.split(","),
            finetune=timed,
            calibration=calib,
            example_inputs=calib[:2],
            progress=False,
        )
        total = time.perf_counter() - t0
        batches = len(train)
        record(
            "s50 KD",
            small,
            note=(
                f"L2 channels, kept whole: {args.kd_ignore}; {args.kd_steps} linear steps, each "
                "followed "
                f"by {args.kd_epochs:g} epoch of distillation from the dense model over "
                f"{args.n_train} train images ({batches} batches of 32 per epoch; T=2, "
                "alpha=0.7, AdamW lr 1e-3 cosine): fine-tune "
                f"{seconds[0]:.0f} s of {total:.0f} s in all"
            ),
        )
    if "q8" in groups:
        try:
            from dfcompress.quant import quantize
        except ImportError:
            print("q8-p50 not run: dfcompress.quant missing")
        else:
            p50 = Pruner(
                amount=0.5,
                sensitivity=True,
                grid=sens_grid,
                n_samples=sens_x.shape[0],
                stop_below=args.stop_below,
            ).apply(base, calibration=sens_x, progress=False)
            q = quantize(p50, "int8", calibration=calib, progress=False, pack=True)
            note = f"int8 packed after p50 sens ({sens_how})"
            if binary:
                from dfcompress.models import pack_binary

                # A quantized BNext file stores its binary convolutions at 1 bit, as in
                # the quantization benchmark; the dense float32 file stays the reference.
                q = pack_binary(q)
                note += "; binary convolutions stored at 1 bit"
            record("q8-p50", q, note=note)

    merged = previous_rows(args.section) if not args.no_results else {}
    merged.update(rows)
    table = markdown_table(HEADERS, [merged[t] for t in ORDER if t in merged])
    print(table)
    lines = []
    if "p50 sens" in merged:
        r = merged["p50 sens"]
        lines.append(
            f"p50 L1 global with sensitivity, no fine-tune: AUC drop <= 0.01 -> {r[2]} "
            f"({'met' if float(r[2]) >= -0.01 else 'MISSED'}); file <= 0.60 of dense -> "
            f"{r[4]} ({'met' if float(r[4]) <= 0.60 else 'MISSED'})"
            + (f", {r[5]} with binary layers packed in both" if r[5] else "")
            + "."
        )
    if "s50 KD" in merged:
        r = merged["s50 KD"]
        lines.append(
            f"s50 + short fine-tune: AUC drop <= 0.02 -> {r[2]} "
            f"({'met' if float(r[2]) >= -0.02 else 'MISSED'}); MACs <= 0.35x -> {r[6]} "
            f"({'met' if float(r[6]) <= 0.35 else 'MISSED'}); batch-32 latency >= 1.8x faster "
            f"-> {1 / float(r[8]):.2f}x ({'met' if 1 / float(r[8]) >= 1.8 else 'MISSED'})."
        )
    if "scan 5x256" in merged:
        r = merged["scan 5x256"]
        lines.append(
            f"Sensitivity scan at 5 amounts over 256 images <= 300 s -> {r[9]} s "
            f"({'met' if float(r[9]) <= 300 else 'MISSED'})."
        )
    if "q8-p50" in merged:
        r = merged["q8-p50"]
        lines.append(
            f"q8-p50: AUC drop <= 0.015 -> {r[2]} ({'met' if float(r[2]) >= -0.015 else 'MISSED'})"
            f"; file <= 0.16 of float32 -> {r[4]} ({'met' if float(r[4]) <= 0.16 else 'MISSED'})."
        )
    verdict = "Targets: " + " ".join(lines) if lines else ""
    print(verdict)
    if not args.no_results:
        notes = (
            f"Model: {source}. Proxy task at {args.size}x{args.size} px, {args.n_test} test "
            "samples. `pN sens`: one sensitivity scan on validation images (batch and amounts "
            "in the notes column), budget allocation for each target, no fine-tune. File "
            "sizes from `dfcompress.save` (pruned weights stored sparsely). Latency ratios: "
            "eager PyTorch, pruned model timed alternately with the dense one in the same run "
            f"(median of 30 runs at batch 1, {args.reps_b32} at "
            f"batch 32), {args.threads} thread(s); unstructured zeros do not speed up dense "
            "kernels, so only structured rows can be faster. The baseline row's latency ratio "
            "is the dense model against itself: the timing noise of this shared machine. Rows "
            "may come from separate runs of this script (--variants), each under the timing "
            "lock."
        )
        if binary:
            notes += (
                " BNext: only its float layers (stem, SE, downsampling, head) can be pruned "
                "unstructured; its binary convolutions hold nearly all the weights, so the plain "
                "file ratio of `pN` stays near 1. `file ratio, binary packed` compares files "
                "with the binary layers packed at 1 bit (`dfcompress.models.pack_binary`) in "
                "both the pruned and the dense model. The q8-p50 file stores the binary "
                "convolutions at 1 bit, as every quantized BNext file in the quantization "
                "benchmark does, so its `file ratio` is against the float32 checkpoint file "
                "(the target's reference) and its packed ratio shows what pruning and int8 "
                "add on top of the 1-bit packing."
            )
        if args.section != "pruning":
            update_section("pruning", INDEX)
        update_section(
            args.section,
            f"## Pruning ({name})\n\n{table}\n\n{verdict}\n\n{notes}\n\n{machine_line()}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
