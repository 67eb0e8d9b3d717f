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
from dfcompress.data import loader, train_detector
from dfcompress.evaluate.metrics import auc
from dfcompress.export import export_onnx
from dfcompress.models import bnext_tiny
from dfcompress.prune.structured import prune_channels
from dfcompress.quant import quantize

RSS_CHILD = """
import resource, sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
s.run(None, {s.get_inputs()[0].name: x})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.down(x) + self.bn2(self.conv2(y)))


def resnet_like(width: int = 32) -> nn.Module:
    """A ResNet-18-shaped detector (one block per stage) with a one-logit head."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 2, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        Block(w, w, 1),
        Block(w, 2 * w, 2),
        Block(2 * w, 4 * w, 2),
        Block(4 * w, 8 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, 1),
    )


def session(path: Path) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def latency_ms(path: Path, batch: int, res: int, repeats: int) -> float:
    sess = session(path)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / batch


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
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    res, n_eval, rep1, rep32 = (64, 64, 3, 1) if args.quick else (args.res, 256, 10, 2)
    size = 64
    test = next(iter(loader("test", size=size, n=n_eval, batch_size=n_eval)))
    images, labels = test[0], test[1].numpy()
    calib = next(iter(loader("val", size=size, n=64, batch_size=64)))[0]

    t0 = time.time()
    res_net = resnet_like(16 if args.quick else 24)
    res_net = train_detector(
        res_net,
        loader("train", size=size, n=256 if args.quick else 512, batch_size=32),
        epochs=1 if args.quick else 2,
        progress=False,
    )
    baselines = {
        "ResNet-like (trained on proxy)": res_net.eval(),
        "BNext-tiny (random weights)": bnext_tiny(num_classes=1).eval(),
    }
    print(f"trained the ResNet-like in {time.time() - t0:.0f} s", flush=True)

    rows: list[list[object]] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for bname, model in baselines.items():
            tag = bname.split()[0]
            pruned = prune_channels(model, 0.5, example_inputs=calib[:2])
            files: dict[str, Path] = {}
            info: dict[str, Any] = {}
            files["float"] = export_onnx(
                model, d / f"{tag}-f.onnx", calib[:8], dynamic_size=True
            ).path
            q = quantize(model, "int8", calibration=calib, progress=False)
            r = export_onnx(
                q,
                d / f"{tag}-q.onnx",
                calib[:8],
                calibration=calib,
                dynamic_size=True,
                atol=1.0,
                min_agreement=0.0,
            )
            files["dfc int8"], info["dfc int8"] = r.path, (r.weights, r.int8_kernels)
            ort_quantize_static(files["float"], d / f"{tag}-ort.onnx", calib)
            files["ort quantize_static"] = d / f"{tag}-ort.onnx"
            files["s50"] = export_onnx(
                pruned, d / f"{tag}-s.onnx", calib[:8], dynamic_size=True
            ).path
            qp = quantize(pruned, "int8", calibration=calib, progress=False)
            r = export_onnx(
                qp,
                d / f"{tag}-sq.onnx",
                calib[:8],
                calibration=calib,
                dynamic_size=True,
                atol=1.0,
                min_agreement=0.0,
            )
            files["s50 + int8"], info["s50 + int8"] = r.path, (r.weights, r.int8_kernels)
            base32 = 0.0
            for vname, path in files.items():
                l1 = latency_ms(path, 1, res, rep1)
                l32 = latency_ms(path, 32, res, rep32)
                if vname == "float":
                    base32 = l32
                a = onnx_auc(path, images, labels)
                rss = peak_rss_mb(path)
                mb = path.stat().st_size / 2**20
                rows.append([bname, vname, l1, l32, f"{base32 / l32:.2f}x", a, mb, rss])
                details[f"{bname}/{vname}"] = info.get(vname)
                print(rows[-1], flush=True)

    headers = [
        "model",
        "variant",
        f"ms/img b1 @{res}px",
        f"ms/img b32 @{res}px",
        "speed-up b32",
        f"AUC (proxy {size}px)",
        "file MB",
        "peak RSS MB (b1 @224px)",
    ]
    table = markdown_table(headers, rows)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    notes = (
        f"{machine_line()} ONNX Runtime, 1 intra-op thread, CPU {platform.processor() or '?'}; "
        f"VNNI: {'yes' if vnni else 'no (AVX2 only)'}. Latency: median of {rep1} (b1) / "
        f"{rep32} (b32) runs at {res} px to keep the run short. AUC: {n_eval} proxy test "
        f"images at {size} px. The BNext-tiny has random weights (no trained checkpoint "
        "here), so its AUC column is not meaningful; its latency, size and RSS are. "
        f"int8 weight storage and fused kernels: {json.dumps(details)}"
    )
    print(table)
    print(notes)
    if not args.no_write and not args.quick:
        update_section("deploy", "## Deployment (ONNX Runtime)\n\n" + table + "\n\n" + notes)


if __name__ == "__main__":
    main()
