"""XNNPACK files at phone resolution: speed, size and memory of what ships.

    python benchmarks/deploy_bnext.py            # 224 px, writes the "deploy-bnext" section
    python benchmarks/deploy_bnext.py --quick    # 64 px smoke run, nothing written

Two networks: ``dfcompress.models.bnext("tiny", num_classes=1)`` (NPR-free, 3 input
channels, as initialised) and ResNet-18 (He et al., 2016: the 11.7M-parameter
ImageNet layout with two basic blocks per stage, defined in this script with a
one-logit head, as initialised). Each is quantized with
``quantize(model, "int8", calibration, target="xnnpack")`` and writes both the float
and the int8 ``.pte`` with :func:`dfcompress.export` (batch of one). For each file:
size, median latency of one image (the two files timed round by round, 1 thread),
the peak RSS of a fresh process that imports torch and ExecuTorch's runtime, loads
the file and runs one image, and that process's RSS with the same imports and no
file (what the model itself adds is the difference); the peak RSS of ExecuTorch's C++
runtime alone running the file on one image, as a phone application does
(:func:`dfcompress.deploy.native.run_native`: no Python, no libtorch); and the file
against the eager model it was exported from on held-out inputs (max abs diff,
decision agreement).
Speed and memory do not depend on trained weights; decisions of an untrained net are
not a detector's, so no AUC is reported here (the trained BNext's are in the
quantization section).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _deploy_peers as peers
from _resnets import resnet
from _results import machine_line, markdown_table, update_section
from dfcompress import export, quantize
from dfcompress.deploy._measure import fresh_latencies
from dfcompress.deploy.native import run_native
from dfcompress.errors import DfcompressError
from dfcompress.models import bnext
from dfcompress.models.efficientnet import efficientnet_b0
from dfcompress.prune import prune_channels, reestimate_bn

HEADERS = [
    "network",
    "file",
    "MB",
    "ms/img b1",
    "speed-up b1",
    "peak RSS MB",
    "RSS over imports MB",
    "C++ runtime peak RSS MB",
    "max abs diff vs eager",
    "decision agreement vs eager",
    "target",
]

BARE = r"""
import json, re, torch
from executorch.runtime import Runtime
Runtime.get()
status = open("/proc/self/status").read()
print(json.dumps({"peak_rss_bytes": int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024}))
"""


#: The deploy issue's speed-up targets at batch 1 over the same network's float file.
SPEED_TARGETS: dict[tuple[str, str], float] = {
    ("BNext-tiny", "dfc int8"): 2.0,
    ("ResNet-18", "dfc int8"): 2.0,
    ("EfficientNet-B0", "dfc int8"): 1.5,
    ("BNext-tiny", "s50 + int8"): 3.5,
    ("EfficientNet-B0", "s50 + int8"): 3.5,
}


def target(model: str, name: str, speedup: float, native: int | None) -> str:
    """The deploy issue's targets for a file, met or NO with the figure.

    Speed-ups of :data:`SPEED_TARGETS`; the memory target (BNext-tiny's int8 file)
    is the inference process's: the C++ runtime's, as it runs on a phone (the Python
    process's figure is in its own columns).
    """
    need = SPEED_TARGETS.get((model, name))
    if need is None:
        return ""
    fast = f"speed-up >= {need:.1f}x: {'yes' if speedup >= need else f'NO ({speedup:.2f}x)'}"
    if (model, name) != ("BNext-tiny", "dfc int8"):
        return fast
    if native is None:
        return fast + "; C++ runtime peak RSS < 200 MB: not measured"
    mem = f"yes ({native / 1e6:.0f} MB)" if native < 200e6 else f"NO ({native / 1e6:.0f} MB)"
    return f"{fast}; C++ runtime peak RSS < 200 MB: {mem}"


def resnet18() -> nn.Module:
    """ResNet-18: 7x7 stem, max pool, stages of 64/128/256/512 channels, two blocks each."""
    return resnet((2, 2, 2, 2))


def native_rss(path: Path, image: torch.Tensor, ref: torch.Tensor) -> tuple[int | None, str]:
    """Peak RSS of the C++ runtime running ``path`` on ``image``, and its output's diff."""
    try:
        run = run_native(path, image)
    except DfcompressError as e:
        print(f"  C++ runtime of {path.name}: {e}", flush=True)
        return None, "n/a"
    return run.peak_rss_bytes, f"{(run.outputs - ref).abs().max().item():.3g}"


def bare_rss() -> int:
    out = subprocess.run(
        [sys.executable, "-c", BARE], capture_output=True, text=True, timeout=300, check=True
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"])


#: Networks with s50 rows (the deploy issue's baselines).
PRUNED = ("BNext-tiny", "EfficientNet-B0")


def with_batch_statistics(net: nn.Module, size: int) -> nn.Module:
    """``net`` with BatchNorm running statistics measured on random inputs (eval mode).

    As initialised (mean 0, variance 1), an untrained EfficientNet-B0's activations
    shrink by about 100x per stage, to 1e-13 at the last one; measured statistics
    keep every network's activations at the scale a trained one has, so the int8
    ranges and the float kernels see values of the usual size.
    """
    g = torch.Generator().manual_seed(2)
    batches = [torch.rand(8, 3, size, size, generator=g) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        return reestimate_bn(net, batches).eval()


def int8(net: nn.Module, calib: torch.Tensor) -> nn.Module:
    # speed and memory rows: no bias correction pass (it changes biases, not the graph)
    return quantize(
        net, "int8", calibration=calib, target="xnnpack", progress=False, bias_correction=False
    )


def measure(
    label: str, net: nn.Module, size: int, repeats: int, base: int
) -> tuple[list[list[object]], str]:
    """The rows of one network's files, and its note (graph, C++ vs Python)."""
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(8, 3, size, size, generator=g) * 2 - 1
    test = torch.rand(16, 3, size, size, generator=g) * 2 - 1
    eager = {"float": net, "dfc int8": int8(net, calib)}
    if label in PRUNED:
        pruned = prune_channels(net, 0.5, example_inputs=calib[:2]).eval()
        eager.update({"s50": pruned, "s50 + int8": int8(pruned, calib)})
    rows: list[list[object]] = []
    parts: list[str] = []
    native_diffs: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        arts = {
            k: export(m, Path(tmp) / f"{i}.pte", test, max_batch=1, check=False)
            for i, (k, m) in enumerate(eager.items())
        }
        times = fresh_latencies(arts, test[:1], batches=(1,), repeats=repeats)
        for name, art in arts.items():
            with torch.no_grad():
                ref = torch.cat([eager[name](test[i : i + 1]) for i in range(len(test))])
            got = art.run(test)
            rss = peers.child_peak_rss("xnnpack", art.path, (3, size, size))
            native, native_diff = native_rss(art.path, test[:1], got[:1])
            native_diffs.append(f"{name} {native_diff}")
            speedup = times["float"][1] / times[name][1]
            rows.append(
                [
                    label,
                    name,
                    f"{art.size_bytes / 1e6:.2f}",
                    f"{times[name][1]:.1f}",
                    f"{speedup:.2f}x",
                    "n/a" if rss is None else f"{rss / 1e6:.0f}",
                    "n/a" if rss is None else f"{(rss - base) / 1e6:.0f}",
                    "n/a" if native is None else f"{native / 1e6:.0f}",
                    f"{(got - ref).abs().max().item():.3g}",
                    f"{((got > 0) == (ref > 0)).float().mean().item():.4f}",
                    target(label, name, speedup, native),
                ]
            )
            print("  ", rows[-1], flush=True)
            d = art.details
            left = [f"{k} x{v}" for k, v in d["non_delegated"].items() if "dim_order" not in k]
            parts.append(
                f"{name}: {d['delegates']} XNNPACK partition(s), {d['delegated_ops']} ops in "
                f"them, outside them {', '.join(left) if left else 'none'}"
            )
    params = sum(p.numel() for p in net.parameters()) / 1e6
    note = (
        f"{label} ({params:.1f}M parameters): C++ vs Python runtime output, max abs diff "
        f"{', '.join(native_diffs)}; graph: {'; '.join(parts)}."
    )
    return rows, note


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px smoke run, nothing written")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    size = 64 if args.quick else args.size
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.time()
    base = bare_rss()
    rows: list[list[object]] = []
    notes: list[str] = []
    nets = {
        "BNext-tiny": bnext("tiny", num_classes=1),
        "ResNet-18": resnet18(),
        "EfficientNet-B0": efficientnet_b0(num_classes=1),
    }
    for label, net in nets.items():
        print(label, flush=True)
        r, note = measure(label, with_batch_statistics(net, size), size, repeats, base)
        rows += r
        notes.append(note)
    elapsed = time.time() - t0
    table = markdown_table(HEADERS, rows)
    text = (
        f"{table}\n\nBNext-tiny (`dfcompress.models.bnext('tiny', num_classes=1)`), "
        "ResNet-18 (torchvision's layout, defined in the script, one-logit head) and "
        "EfficientNet-B0 (`dfcompress.models.efficientnet.efficientnet_b0(num_classes=1)`), "
        "untrained (BatchNorm statistics measured on 32 random inputs, so activations have "
        f"a trained network's scale), at {size} px, batch 1, ExecuTorch 1.5.1 XNNPACK "
        "files written by `dfcompress.export` (int8: `quantize(model, 'int8', 8 calibration "
        "images, target='xnnpack')`; s50: `prune_channels(model, 0.5)`, not fine-tuned). "
        "Latency: median of "
        f"{repeats} interleaved runs, each after 3 untimed runs of the same file, in a fresh "
        "process that loads the files, 1 thread. "
        "Peak RSS: VmHWM of a fresh process "
        "that imports torch and ExecuTorch's runtime, loads the file and runs one image; "
        f"the same imports with no file peak at {base / 1e6:.0f} MB, and 'RSS over imports' "
        "is the difference (what the model adds). C++ runtime: "
        "`dfcompress.deploy.native.run_native`, a program built against the libraries "
        "the executorch wheel ships (no Python, no libtorch) that loads the file and runs "
        "the first test image. Eager comparison: the 16 held-out random inputs, each file "
        "against the eager model it was exported from (BNext's sign activations turn float "
        "rounding differences in values near zero into other signs, hence its larger "
        f"differences). {' '.join(notes)} (Layout copies "
        f"around the partitions not listed.) {peers.cpu_flags()} Measured in "
        f"{elapsed / 60:.1f} min.\n\n{machine_line()}"
    )
    print(text)
    if not args.quick:
        update_section(
            "deploy-bnext",
            "## Deployment at phone resolution (XNNPACK): "
            "BNext-tiny, ResNet-18, EfficientNet-B0\n\n" + text,
        )


if __name__ == "__main__":
    main()
