"""BNext-tiny's XNNPACK files at phone resolution: speed, size and memory of what ships.

    python benchmarks/deploy_bnext.py            # 224 px, writes the "deploy-bnext" section
    python benchmarks/deploy_bnext.py --quick    # 64 px smoke run, nothing written

Builds ``dfcompress.models.bnext("tiny", num_classes=1)`` (NPR-free, 3 input channels,
as initialised), quantizes it with
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

sys.path.insert(0, str(Path(__file__).parent))
import _deploy_peers as peers
from _results import machine_line, markdown_table, update_section
from dfcompress import export, quantize
from dfcompress.deploy._measure import latencies
from dfcompress.deploy.native import run_native
from dfcompress.errors import DfcompressError
from dfcompress.models import bnext

HEADERS = [
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


def target(name: str, speedup: float, native: int | None) -> str:
    """The deploy issue's BNext targets for the int8 file, met or NO with the figure.

    The memory target is the inference process's: the C++ runtime's, as it runs on a
    phone (the Python process's figure is in its own columns).
    """
    if name == "float":
        return ""
    fast = f"speed-up >= 2.0x: {'yes' if speedup >= 2.0 else f'NO ({speedup:.2f}x)'}"
    if native is None:
        return fast + "; C++ runtime peak RSS < 200 MB: not measured"
    mem = f"yes ({native / 1e6:.0f} MB)" if native < 200e6 else f"NO ({native / 1e6:.0f} MB)"
    return f"{fast}; C++ runtime peak RSS < 200 MB: {mem}"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px smoke run, nothing written")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    size = 64 if args.quick else args.size
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.time()
    net = bnext("tiny", num_classes=1).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(8, 3, size, size, generator=g) * 2 - 1
    test = torch.rand(16, 3, size, size, generator=g) * 2 - 1
    q = quantize(net, "int8", calibration=calib, target="xnnpack", progress=False)
    rows: list[list[object]] = []
    parts: list[str] = []
    native_diffs: list[str] = []
    base = bare_rss()
    with tempfile.TemporaryDirectory() as tmp:
        arts = {
            "float": export(net, Path(tmp) / "float.pte", test, max_batch=1, check=False),
            "dfc int8": export(q, Path(tmp) / "int8.pte", test, max_batch=1, check=False),
        }
        eager = {"float": net, "dfc int8": q}
        times = latencies(arts, test[:1], batches=(1,), repeats=2 if args.quick else args.repeats)
        for name, art in arts.items():
            with torch.no_grad():
                ref = torch.cat([eager[name](test[i : i + 1]) for i in range(len(test))])
            got = art.run(test)
            rss = peers.child_peak_rss("xnnpack", art.path, (3, size, size))
            native, native_diff = native_rss(art.path, test[:1], got[:1])
            native_diffs.append(f"{name} {native_diff}")
            rows.append(
                [
                    name,
                    f"{art.size_bytes / 1e6:.2f}",
                    f"{times[name][1]:.1f}",
                    f"{times['float'][1] / times[name][1]:.2f}x",
                    "n/a" if rss is None else f"{rss / 1e6:.0f}",
                    "n/a" if rss is None else f"{(rss - base) / 1e6:.0f}",
                    "n/a" if native is None else f"{native / 1e6:.0f}",
                    f"{(got - ref).abs().max().item():.3g}",
                    f"{((got > 0) == (ref > 0)).float().mean().item():.4f}",
                    target(name, times["float"][1] / times[name][1], native),
                ]
            )
            d = art.details
            left = [f"{k} x{v}" for k, v in d["non_delegated"].items() if "dim_order" not in k]
            parts.append(
                f"{name}: {d['delegates']} XNNPACK partition(s), {d['delegated_ops']} ops in "
                f"them, outside them {', '.join(left) if left else 'none'}"
            )
    elapsed = time.time() - t0
    table = markdown_table(HEADERS, rows)
    text = (
        f"{table}\n\nBNext-tiny (`dfcompress.models.bnext('tiny', num_classes=1)`, "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters, untrained) "
        f"at {size} px, batch 1, ExecuTorch 1.5.1 XNNPACK "
        "files written by `dfcompress.export` (int8: `quantize(model, 'int8', 8 calibration "
        "images, target='xnnpack')`). Latency: median of "
        f"{args.repeats} interleaved runs, 1 thread. Peak RSS: VmHWM of a fresh process "
        "that imports torch and ExecuTorch's runtime, loads the file and runs one image; "
        f"the same imports with no file peak at {base / 1e6:.0f} MB, and 'RSS over imports' "
        "is the difference (what the model adds). C++ runtime: "
        "`dfcompress.deploy.native.run_native`, a program built against the libraries "
        "the executorch wheel ships (no Python, no libtorch) that loads the file and runs "
        "the first test image; its output against the Python runtime's, max abs diff: "
        f"{', '.join(native_diffs)}. Eager comparison: the 16 held-out "
        "random inputs, each file against the eager model it was exported from. "
        f"Graph: {'; '.join(parts)} (and the layout copies around them). "
        f"{peers.cpu_flags()} Measured in {elapsed / 60:.1f} min.\n\n{machine_line()}"
    )
    print(text)
    if not args.quick:
        update_section(
            "deploy-bnext", "## Deployment: BNext-tiny at phone resolution (XNNPACK)\n\n" + text
        )


if __name__ == "__main__":
    main()
