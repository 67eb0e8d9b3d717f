"""Deployment benchmark: float vs int8 vs pruned ONNX models in ONNX Runtime on this CPU.

For each trained baseline it writes these ONNX files and measures them side by side:

- ``float``: the model as trained;
- ``dfc int8``: ``dfcompress`` int8 (per-channel weights, calibrated activations
  after activation equalization; binary convolutions as exact int8 convolutions);
- ``dfc int8, no equalization``: the same without activation equalization;
- ``dfc int8-onnx + QAT``: ``"int8-onnx"`` (``"int8"`` whose convolution outputs are
  rounded in the eager model as ONNX Runtime rounds them, with ranges calibrated by
  the MSE observer), then one epoch of quantization-aware distillation from the float
  model on the train split (``alpha=1``, ``lr=3e-5``; ``quantize(..., finetune=...)``,
  so the calibrated model trains before it is frozen); exported with
  ``quantize_elementwise=False``, since the eager model does not simulate the
  rounding of the elementwise operators;
- ``dfc int8-onnx, no equalization + QAT``: the same without activation equalization
  (no float ``Div`` between int8 kernels) and with the elementwise operators as
  integer kernels (``quantize_elementwise=True``): the fast variant;
- ``dfc int8-onnx + QAT, dw/pwl not equalized``: models with depthwise and projection
  convolutions (timm's ``conv_dw`` / ``conv_pwl``) only: those convolutions, whose
  inputs are the largest tensors, without equalization (no ``Div`` there), the others
  as ``int8-onnx``; elementwise operators quantized;
- ``dfc int8 (binary convs only)``: models with binary convolutions only: the float
  model with just its binary convolutions as int8 kernels;
- ``ort quantize_static``: ONNX Runtime's own QDQ quantizer on the float file
  (same calibration images, ``per_channel=True``);
- ``s50``: 50 % of the channels removed by structured pruning, then one epoch of
  distillation from the unpruned model on the train split (``lr=1e-3``, ``alpha=0.7``,
  the settings of ``benchmarks/pruning.py``);
- ``s50 + int8``: that model quantized to int8 (calibration only);
- ``s50 + int8-onnx + QAT, dw/pwl not equalized``: models with depthwise and
  projection convolutions only: the pruned model quantized as the mixed variant above,
  with the same quantization-aware distillation from the unpruned float model.

Columns: latency per image at batch 1 and 32 (median, one intra-op and one inter-op
thread, variants interleaved), the proxy-task AUC at the resolution each baseline was
trained at (``baselines.json``), file size and the peak RSS of a separate process that
loads the file and runs one 224 px image. The EfficientNet-B0 baseline needs timm: run
under the zoo environment, ``python benchmarks/deploy.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, machine_line, markdown_table, update_section
from dfcompress.data import loader
from dfcompress.demo import DEMO_BNEXT_SIZE, load_demo_bnext
from dfcompress.deploy import export_onnx
from dfcompress.deploy._onnx_runtime import int8_kernels
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import auc
from dfcompress.io import load
from dfcompress.models import BinaryConv2d
from dfcompress.prune.distill import distill, distill_finetune
from dfcompress.prune.structured import prune_channels
from dfcompress.quant import quantize
from dfcompress.quant.config import UINT8_OUTPUTS, IntQuant, resolve_config

Baseline = tuple[nn.Module, int, bool]

#: "int8" without activation equalization: every equalized layer divides its input by
#: per-channel factors, a float Div in the graph between int8 kernels.
NO_EQUALIZATION = dataclasses.replace(resolve_config("int8"), smoothing=None)

#: "int8-onnx" without activation equalization.
ONNX_NO_EQUALIZATION = dataclasses.replace(NO_EQUALIZATION, outputs=UINT8_OUTPUTS)

#: Layers quantized without equalization in the mixed variant: depthwise convolutions
#: and the projections after squeeze-and-excitation (timm's names), whose inputs are
#: the widest tensors of an inverted-residual block.
PLAIN_LAYERS = ("*conv_dw", "*conv_pwl")

#: Quantization-aware distillation: one epoch on the train split, labels ignored.
QAT_LR, QAT_EPOCHS, QAT_IMAGES = 3e-5, 1, 2000

#: Distillation of the pruned model (one epoch, labels weighted 0.3).
PRUNE_LR = 1e-3

RSS_CHILD = """
import re, sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
s.run(None, {s.get_inputs()[0].name: x})
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)))
"""


def baselines(quick: bool, only: list[str]) -> tuple[dict[str, Baseline], list[str]]:
    """name -> (model in eval mode, proxy side it was trained at, trained?); skipped notes."""
    out: dict[str, Baseline] = {}
    skipped: list[str] = []
    ckpts = Path(os.environ.get("DFC_BASELINES", Path.home() / ".cache/dfcompress/baselines"))
    meta_file = ckpts / "baselines.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    for f in sorted(ckpts.glob("*.safetensors")):
        if only and f.stem not in only:
            continue
        try:
            model = load(f).eval()
        except DfcompressError as e:  # e.g. the zoo extra (timm) is not installed
            skipped.append(f"{f.stem}: {str(e).splitlines()[0][:120]}")
            continue
        out[f.stem] = (model, int(meta.get(f.stem, {}).get("size", DEMO_BNEXT_SIZE)), True)
    if not out and not only:
        out["demo NPR+BNext"] = (load_demo_bnext().eval(), DEMO_BNEXT_SIZE, True)
    if quick:
        out = dict(list(out.items())[:1])
    return out, skipped


def session(path: Path) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def latencies_ms(files: dict[str, Path], batch: int, res: int, rounds: int) -> dict[str, float]:
    """Median latency per image; variants interleaved round by round so that load
    from other processes on the machine hits them all alike."""
    sessions = {k: session(p) for k, p in files.items()}
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in files}
    for sess in sessions.values():
        sess.run(None, {sess.get_inputs()[0].name: x})
    for _ in range(rounds):
        for k, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, {sess.get_inputs()[0].name: x})
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) / batch for k, v in times.items()}


def onnx_auc(path: Path, images: torch.Tensor, labels: np.ndarray) -> float:
    sess = session(path)
    name = sess.get_inputs()[0].name
    scores = [
        sess.run(None, {name: images[i : i + 64].numpy()})[0].reshape(-1)
        for i in range(0, len(images), 64)
    ]
    return auc(labels, np.concatenate(scores))


def peak_rss_mb(path: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def ort_quantize_static(src: Path, dst: Path, calib: torch.Tensor) -> None:
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(
                [{"input": calib[i : i + 8].numpy()} for i in range(0, len(calib), 8)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    oq.quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=oq.QuantFormat.QDQ,
        per_channel=True,
        activation_type=oq.QuantType.QUInt8,
        weight_type=oq.QuantType.QInt8,
    )


def qat(
    model: nn.Module,
    config: IntQuant | str | list[Any],
    calib: torch.Tensor,
    train: Any,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, float]:
    """Quantize ``model`` with ``config``, distilling ``teacher`` (default: the float model)
    into the calibrated model before it is frozen; seconds taken."""
    t0 = time.time()
    finetune = distill_finetune(
        model if teacher is None else teacher,
        train,
        epochs=QAT_EPOCHS,
        lr=QAT_LR,
        alpha=1.0,
        progress=False,
    )
    q = quantize(model, config, calibration=calib, progress=False, finetune=finetune)
    return q, time.time() - t0


def export_variants(
    model: nn.Module,
    d: Path,
    tag: str,
    calib: torch.Tensor,
    details: dict[str, Any],
    train: Any = None,
) -> dict[str, Path]:
    """Write every variant of ``model``; returns variant name -> ONNX file."""
    ex = calib[:8]
    kw: dict[str, Any] = {"dynamic_size": True}
    # no agreement floor: the benchmark reports the AUC each file reaches
    qkw: dict[str, Any] = {"calibration": calib, "atol": 1e3, "min_agreement": 0.0, **kw}
    files: dict[str, Path] = {}
    files["float"] = export_onnx(model, d / f"{tag}-f.onnx", ex, **kw).path
    q = quantize(model, "int8", calibration=calib, progress=False)
    r = export_onnx(q, d / f"{tag}-q.onnx", ex, **qkw)
    files["dfc int8"] = r.path
    details[f"{tag} dfc int8"] = [r.weights, r.int8_kernels]
    q = quantize(model, NO_EQUALIZATION, calibration=calib, progress=False)
    r = export_onnx(q, d / f"{tag}-qn.onnx", ex, **qkw)
    files["dfc int8, no equalization"] = r.path
    details[f"{tag} dfc int8, no equalization"] = [r.weights, r.int8_kernels]
    if train is not None:
        for name, config, short, elementwise in (
            ("dfc int8-onnx + QAT", "int8-onnx", "qq", False),
            ("dfc int8-onnx, no equalization + QAT", ONNX_NO_EQUALIZATION, "qqn", True),
        ):
            q, seconds = qat(model, config, calib, train)
            r = export_onnx(
                q, d / f"{tag}-{short}.onnx", ex, quantize_elementwise=elementwise, **qkw
            )
            files[name] = r.path
            details[f"{tag} {name}"] = [r.weights, r.int8_kernels, f"QAT {seconds:.0f} s"]
    names = [n for n, _ in model.named_modules()]
    mixed = train is not None and any(n.endswith(("conv_dw", "conv_pwl")) for n in names)
    rules = [(g, ONNX_NO_EQUALIZATION) for g in PLAIN_LAYERS] + [("all", "int8-onnx")]
    if mixed:
        q, seconds = qat(model, rules, calib, train)
        r = export_onnx(q, d / f"{tag}-qqm.onnx", ex, quantize_elementwise=True, **qkw)
        name = "dfc int8-onnx + QAT, dw/pwl not equalized"
        files[name] = r.path
        details[f"{tag} {name}"] = [r.weights, r.int8_kernels, f"QAT {seconds:.0f} s"]
    if any(isinstance(m, BinaryConv2d) for m in model.modules()):
        r = export_onnx(model, d / f"{tag}-b.onnx", ex, binary="int8", **qkw)
        files["dfc int8 (binary convs only)"] = r.path
        details[f"{tag} binary convs only"] = [r.weights, r.int8_kernels]
    ort_quantize_static(files["float"], d / f"{tag}-ort.onnx", calib)
    files["ort quantize_static"] = d / f"{tag}-ort.onnx"
    details[f"{tag} ort quantize_static"] = ["int8", int8_kernels(files["ort quantize_static"])]
    pruned = prune_channels(model, 0.5, example_inputs=ex)
    if train is not None:
        t0 = time.time()
        pruned = distill(pruned, model, train, epochs=1, lr=PRUNE_LR, progress=False)
        details[f"{tag} s50"] = [f"distillation {time.time() - t0:.0f} s"]
    files["s50"] = export_onnx(pruned, d / f"{tag}-s.onnx", ex, **kw).path
    qp = quantize(pruned, "int8", calibration=calib, progress=False)
    r = export_onnx(qp, d / f"{tag}-sq.onnx", ex, **qkw)
    files["s50 + int8"] = r.path
    details[f"{tag} s50 + int8"] = [r.weights, r.int8_kernels]
    if mixed:
        qp, seconds = qat(pruned, rules, calib, train, teacher=model)
        r = export_onnx(qp, d / f"{tag}-sqm.onnx", ex, quantize_elementwise=True, **qkw)
        name = "s50 + int8-onnx + QAT, dw/pwl not equalized"
        files[name] = r.path
        details[f"{tag} {name}"] = [r.weights, r.int8_kernels, f"QAT {seconds:.0f} s"]
    return files


def prepare(out: Path, quick: bool, only: list[str]) -> None:
    """Export every variant of every baseline into ``out`` (untimed; run it niced)."""
    models, skipped = baselines(quick, only)
    meta: dict[str, Any] = {"skipped": skipped, "models": {}}
    for bname, (model, size, _) in models.items():
        t0 = time.time()
        calib = next(iter(loader("val", size=size, n=128, batch_size=128)))[0]
        details: dict[str, Any] = {}
        train = loader("train", size=size, n=64 if quick else QAT_IMAGES, batch_size=32)
        files = export_variants(model, out, bname, calib, details, train)
        meta["models"][bname] = {
            "size": size,
            "files": {k: v.name for k, v in files.items()},
            "details": details,
        }
        print(f"{bname}: exported in {time.time() - t0:.0f} s", flush=True)
    (out / "meta.json").write_text(json.dumps(meta))


def kept_rows(models: list[str]) -> tuple[list[str], list[str]]:
    """Table rows and note lines of the "deploy" section for baselines not measured now."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(r"<!-- begin:deploy -->(.*?)<!-- end:deploy -->", text, re.S)
    lines = (m.group(1) if m else "").splitlines()
    noted = {ln[4:].split("**")[0] for ln in lines if ln.startswith("- **")}
    keep = noted - set(models)
    rows = [ln for ln in lines if ln.startswith("| ") and ln[2:].split(" |")[0] in keep]
    notes = [ln for ln in lines if ln.startswith("- **") and ln[4:].split("**")[0] in keep]
    return rows, notes


def measure(
    src: Path, res: int, n_eval: int, rep1: int, rep32: int
) -> tuple[list[list[object]], dict[str, Any]]:
    """Latency (interleaved), AUC, file size and peak RSS of the files :func:`prepare` wrote."""
    meta = json.loads((src / "meta.json").read_text())
    rows: list[list[object]] = []
    for bname, info in meta["models"].items():
        size = int(info["size"])
        files = {k: src / v for k, v in info["files"].items()}
        test = next(iter(loader("test", size=size, n=n_eval, batch_size=n_eval)))
        images, labels = test[0], test[1].numpy()
        lat1 = latencies_ms(files, 1, res, rep1)
        lat32 = latencies_ms(files, 32, res, rep32)
        for vname, path in files.items():
            rows.append(
                [
                    bname,
                    vname,
                    lat1[vname],
                    lat32[vname],
                    f"{lat32['float'] / lat32[vname]:.2f}x",
                    f"{onnx_auc(path, images, labels):.4f} @{size}px",
                    path.stat().st_size / 2**20,
                    peak_rss_mb(path),
                ]
            )
            print(rows[-1], flush=True)
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--prepare", type=Path, help="only export the variants into this folder")
    ap.add_argument("--measure", type=Path, help="only measure the files --prepare wrote")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--res", type=int, default=112, help="latency resolution (px)")
    ap.add_argument("--model", action="append", default=[], help="only these baselines")
    ap.add_argument("--n-test", type=int, default=512, help="test images for the AUC")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved batch-32 rounds")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    res, n_eval, rep1, rep32 = (
        (64, 64, 2, 1) if args.quick else (args.res, args.n_test, 10, args.rounds)
    )
    if args.prepare is not None:
        args.prepare.mkdir(parents=True, exist_ok=True)
        prepare(args.prepare, args.quick, args.model)
        return
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.measure
        if src is None:
            src = Path(tmp)
            prepare(src, args.quick, args.model)
        rows, meta = measure(src, res, n_eval, rep1, rep32)
    elapsed = time.time() - t0

    headers = [
        "model",
        "variant",
        f"ms/img b1 @{res}px",
        f"ms/img b32 @{res}px",
        "speed-up b32",
        "AUC (proxy test)",
        "file MB",
        "peak RSS MB (b1 @224px)",
    ]
    names = list(meta["models"])
    old_rows, old_notes = kept_rows(names)
    table = markdown_table(headers, rows)
    table = "\n".join([*table.splitlines()[:2], *old_rows, *table.splitlines()[2:]])
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in flags.splitlines() if "model name" in ln), "?"
    )
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    import onnxruntime

    common = (
        f"ONNX Runtime {onnxruntime.__version__}, 1 intra-op and 1 inter-op thread, "
        f"ORT_ENABLE_ALL; CPU {cpu}; VNNI: "
        f"{'yes' if vnni else 'no (AVX2 only: int8 kernels use 16-bit pair sums)'}. "
        f"Latency: median of {rep1} (b1) / {rep32} (b32) runs at {res} px, all variants "
        "of a model interleaved round by round. AUC: "
        f"{n_eval} proxy test images at the resolution the baseline was trained at; "
        "calibration: 128 val images. QAT: quantization-aware distillation from the float "
        "model (the unpruned one for s50 rows) run by quantize(..., finetune=...) on the "
        f"calibrated model before it is frozen, {QAT_EPOCHS} epoch over {QAT_IMAGES} train "
        "images (batch 32, AdamW, "
        f"lr {QAT_LR:g}, alpha 1), its seconds in the details. s50: one epoch of "
        f"distillation from the unpruned model on the same images (lr {PRUNE_LR:g}, "
        "alpha 0.7). dfc files use int8 weights; elementwise operators are quantized except "
        "in the int8-onnx + QAT row (quantize_elementwise=False). Peak "
        "RSS: VmHWM of a fresh process that loads the file and runs one 1x3x224x224 image."
    )
    notes = [
        f"- **{b}**: {machine_line()} {common} Measured in {elapsed / 60:.1f} min "
        f"(with {', '.join(names)}). int8 weight storage and the integer kernels ONNX "
        f"Runtime runs: {json.dumps(info['details'])}"
        for b, info in meta["models"].items()
    ]
    notes += [f"- skipped: {s}" for s in meta["skipped"]]
    body = "\n".join(sorted([*old_notes, *notes]))
    print(table)
    print(body)
    if not args.no_write and not args.quick:
        update_section("deploy", "## Deployment (ONNX Runtime)\n\n" + table + "\n\n" + body)


if __name__ == "__main__":
    main()
