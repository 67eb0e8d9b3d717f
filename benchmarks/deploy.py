"""Deployment benchmark: float vs int8 vs pruned ONNX models in ONNX Runtime on this CPU.

For each baseline it writes five ONNX files and measures them side by side:

- ``float``: the model as trained;
- ``dfc int8``: ``dfcompress`` int8 (per-channel weights, calibrated activations);
- ``ort quantize_static``: ONNX Runtime's own QDQ quantizer on the float file
  (same calibration images, ``per_channel=True``);
- ``s50``: 50 % of the channels removed by structured pruning;
- ``s50 + int8``: both.

Columns: latency per image at batch 1 and 32 (median, one intra-op thread), the
proxy-task AUC, file size and the peak RSS of a separate process that loads the
file and runs one 224 px image. Run: ``python benchmarks/deploy.py`` (``--quick``
for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from _results import machine_line, markdown_table, update_section
from dfcompress.data import loader
from dfcompress.data.detectors import npr_bnext
from dfcompress.demo import DEMO_SIZE, load_demo_detector
from dfcompress.evaluate.metrics import auc
from dfcompress.export import export_onnx
from dfcompress.io import load
from dfcompress.prune.structured import prune_channels
from dfcompress.quant import quantize

RSS_CHILD = """
import re, sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
s.run(None, {s.get_inputs()[0].name: x})
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)))
"""


def baselines(quick: bool) -> dict[str, tuple[nn.Module, int, bool]]:
    """name -> (model in eval mode, proxy image side for its AUC, trained?)."""
    out: dict[str, tuple[nn.Module, int, bool]] = {}
    ckpts = Path(os.environ.get("DFC_BASELINES", Path.home() / ".cache/dfcompress/baselines"))
    meta = ckpts / "baselines.json"
    size = json.loads(meta.read_text()).get("size", 32) if meta.is_file() else 32
    for f in sorted(ckpts.glob("*.safetensors")):
        out[f"{f.stem} (trained)"] = (load(f).eval(), int(size), True)
    if not out:
        out["demo NPR+BNext (trained)"] = (load_demo_detector().eval(), DEMO_SIZE, True)
        torch.manual_seed(0)
        out["NPR+BNext-tiny (random)"] = (npr_bnext("tiny").eval(), DEMO_SIZE, False)
        try:
            import timm
        except ImportError:
            pass
        else:
            net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1)
            out["efficientnet_b0 (random)"] = (net.eval(), DEMO_SIZE, False)
    if quick:
        out = dict(list(out.items())[:1])
    return out


def session(path: Path) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--res", type=int, default=112, help="latency resolution (px)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    res, n_eval, rep1, rep32 = (64, 64, 3, 1) if args.quick else (args.res, 256, 10, 2)
    rows: list[list[object]] = []
    details: dict[str, Any] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n_model, (bname, (model, size, trained)) in enumerate(baselines(args.quick).items()):
            tag = f"m{n_model}"
            test = next(iter(loader("test", size=size, n=n_eval, batch_size=n_eval)))
            images, labels = test[0], test[1].numpy()
            calib = next(iter(loader("val", size=size, n=128, batch_size=128)))[0]
            ex = calib[:8]
            kw: dict[str, Any] = {"dynamic_size": True}
            qkw: dict[str, Any] = {"calibration": calib, "atol": 1e3, "min_agreement": 0.0, **kw}
            files: dict[str, Path] = {}
            files["float"] = export_onnx(model, d / f"{tag}-f.onnx", ex, **kw).path
            q = quantize(model, "int8", calibration=calib, progress=False)
            r = export_onnx(q, d / f"{tag}-q.onnx", ex, **qkw)
            files["dfc int8"] = r.path
            details[f"{bname} / dfc int8"] = [r.weights, r.int8_kernels, round(r.max_abs_diff, 4)]
            ort_quantize_static(files["float"], d / f"{tag}-ort.onnx", calib)
            files["ort quantize_static"] = d / f"{tag}-ort.onnx"
            pruned = prune_channels(model, 0.5, example_inputs=ex)
            files["s50"] = export_onnx(pruned, d / f"{tag}-s.onnx", ex, **kw).path
            qp = quantize(pruned, "int8", calibration=calib, progress=False)
            r = export_onnx(qp, d / f"{tag}-sq.onnx", ex, **qkw)
            files["s50 + int8"] = r.path
            details[f"{bname} / s50 + int8"] = [r.weights, r.int8_kernels, round(r.max_abs_diff, 4)]
            print(f"{bname}: exported in {time.time() - t0:.0f} s", flush=True)
            lat1 = latencies_ms(files, 1, res, rep1)
            lat32 = latencies_ms(files, 32, res, rep32)
            for vname, path in files.items():
                a = onnx_auc(path, images, labels) if trained else float("nan")
                rows.append(
                    [
                        bname,
                        vname,
                        lat1[vname],
                        lat32[vname],
                        f"{lat32['float'] / lat32[vname]:.2f}x",
                        a,
                        path.stat().st_size / 2**20,
                        peak_rss_mb(path),
                    ]
                )
                print(rows[-1], flush=True)
            size_note = size

    headers = [
        "model",
        "variant",
        f"ms/img b1 @{res}px",
        f"ms/img b32 @{res}px",
        "speed-up b32",
        f"AUC (proxy {size_note}px)",
        "file MB",
        "peak RSS MB (b1 @224px)",
    ]
    table = markdown_table(headers, rows)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    notes = (
        f"{machine_line()} ONNX Runtime, 1 intra-op thread, CPU {platform.processor() or '?'}; "
        f"VNNI: {'yes' if vnni else 'no (AVX2 only)'}. Latency: median of {rep1} (b1) / "
        f"{rep32} (b32) runs at {res} px, variants interleaved. AUC: {n_eval} proxy test "
        f"images at {size_note} px; nan for models with random weights (no trained "
        "checkpoint from benchmarks/train_baselines.py was found), whose latency, size "
        "and RSS columns still hold. Peak RSS: VmHWM of a fresh process that loads the "
        "file and runs one 1x3x224x224 image. "
        f"int8 weight storage and fused kernels: {json.dumps(details)}"
    )
    print(table)
    print(notes)
    if not args.no_write and not args.quick:
        update_section("deploy", "## Deployment (ONNX Runtime)\n\n" + table + "\n\n" + notes)


if __name__ == "__main__":
    main()
