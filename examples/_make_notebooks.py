"""Write the example notebooks from plain lists of cells, and execute them.

The notebooks are generated so that their source stays reviewable as Python;
run ``python examples/_make_notebooks.py`` after editing a cell below (it
writes them without outputs), then ``python examples/_make_notebooks.py
--execute`` to run each one top to bottom and store its outputs, which the
documentation shows as they are. ``--execute`` fails on the first error and
prints each notebook's run time (each should stay under a minute on a CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import warnings

import torch

warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.set_num_threads(2)"""

DATA = """\
from dfcompress.data import loader

SIZE = 32  # the BNext detector's input side, in pixels
calib = loader("train", size=SIZE, n=128, batch_size=32)
test = loader("test", size=SIZE, n=192, batch_size=64)"""

Cell = tuple[str, str]  # ("md" | "py", source)


def md(text: str) -> Cell:
    """A markdown cell."""
    return ("md", text.strip())


def py(text: str) -> Cell:
    """A code cell."""
    return ("py", text.strip())


QUICKSTART: list[Cell] = [
    md("""
# Quickstart: compress a detector in one call

This notebook takes a trained deepfake detector, shrinks it with a *recipe*
(`"q8-p50"`: prune half of the float weights, then quantize to int8), and checks
what that cost: file size and AUC on held-out data. Everything runs on a CPU in
seconds because the detector is small and the images are 32 x 32.

The detector is a small BNext shipped with dfcompress (binary
convolutions with float stem, squeeze-and-excitation branches and head) reading
NPR features, trained on the built-in *proxy task* (real photos against copies
that went through a generator-like up-sampling pipeline)."""),
    py(SETUP),
    py("""
import dfcompress as dfc
from dfcompress.demo import load_demo_bnext

model = load_demo_bnext()
sum(p.numel() for p in model.parameters())"""),
    md("""
The proxy data come from `dfcompress.data`. Calibration data only need
inputs; the test split has labels (1 = fake)."""),
    py(DATA),
    md("""
## One call

`dfc.compress` never changes the model you pass in: it returns a new one. Pruning
steps run first, then quantization; `calibration=` gives the activation ranges
for int8 and the data for the sensitivity scan that spreads the 50 % over the
layers."""),
    py("""
small = dfc.compress(model, "q8-p50", calibration=calib, pack=True, progress=False)
small.dfc_history[-1]["recipe"]"""),
    md("""
## What did it cost?

`dfc.measure` reports the serialized size and the parameter count; the AUC comes
from the detection metrics in `dfcompress.evaluate.metrics`. Two details
matter for the size. `pack=True` stores the int8 weights as integers (without
it they stay float32 with their scales, ready for more fine-tuning). And most
of a BNext's weights are binary: `pack_binary` stores them at one bit each,
their deployed form, with identical outputs. We compare both models in that
deployed form, so the figures show what the recipe adds."""),
    py("""
from dfcompress.data import predict
from dfcompress.evaluate.metrics import auc
from dfcompress.models import pack_binary

print(f"unpacked float model: {dfc.measure(model).size_mb:.3f} MB")
for name, m in {"baseline": model, "q8-p50": small}.items():
    deployed = pack_binary(m)
    p = predict(deployed, test, progress=False)
    size = dfc.measure(deployed).size_mb
    print(f"{name:9s} size {size:6.3f} MB   AUC {auc(p.labels, p.scores):.4f}")"""),
    md("""
## Save and load

`dfc.save` writes one safetensors file plus a JSON manifest; nothing is
pickled, so `dfc.load` never runs code from the file. The manifest records how
to rebuild the model (here `dfcompress.demo:demo_detector`) and the quantized
and packed layers that replaced the originals."""),
    py("""
import tempfile
from pathlib import Path

folder = Path(tempfile.mkdtemp())
deployed = pack_binary(small)
path = dfc.save(deployed, folder / "q8-p50.safetensors")
back = dfc.load(path)
x = next(iter(test))[0][:8]
with torch.no_grad():
    print("identical outputs:", torch.equal(deployed(x), back(x)))
print(f"file: {path.stat().st_size / 1e6:.3f} MB")"""),
]

BNEXT_ISE: list[Cell] = [
    md("""
# I-SE-O mixed precision on BNext

The BNext compression study named its quantization configs by three bit widths,
**I-SE-O**: I = the stem convolution, SE = both 1x1 convolutions of every
squeeze-and-excitation branch, O = the classifier head; 32 means "left in
float". Its best trade-offs were 8-4-8 and 8-8-8. `dfc.presets.ise`
turns those three numbers into quantization rules, and the `"se"` selector
finds the SE branches of BNext (and of timm and torchvision models)
structurally."""),
    py(SETUP),
    py("""
import dfcompress as dfc
from dfcompress.demo import load_demo_bnext

model = load_demo_bnext()
sorted(dfc.select(model, "se"))[:4]"""),
    md("The rules are plain `(selector, config)` pairs; every other layer stays float."),
    py("""
ise = dfc.presets.ise

for selector, config in ise(8, 4, 8):
    print(selector, "->", config)"""),
    py(DATA),
    md("""
## Quantize with each preset and compare

`dfc.quantize` accepts a config name (`"int8"`) or a list of rules. We quantize the
same detector with four presets and score each on the test split. The study's
own quantizer (asymmetric min/max per output row recomputed at every forward)
is available as `observer="dynamic"`."""),
    py("""
from dfcompress.data import predict
from dfcompress.evaluate.metrics import auc
from dfcompress.quant import QuantLayer

variants = {"float": model}
for bits in [(8, 8, 8), (8, 4, 8), (8, 32, 8), (4, 4, 8)]:
    name = "ise" + "-".join(map(str, bits))
    variants[name] = dfc.quantize(model, ise(*bits), calibration=calib, progress=False)
variants["ise8-4-8 dynamic"] = dfc.quantize(
    model, ise(8, 4, 8, observer="dynamic"), calibration=calib, progress=False
)

for name, m in variants.items():
    n_quant = sum(isinstance(layer, QuantLayer) for layer in m.modules())
    p = predict(m, test, progress=False)
    print(f"{name:17s} quantized layers {n_quant:3d}   AUC {auc(p.labels, p.scores):.4f}")"""),
    md("""
## The rules as an object

`dfc.Quantizer` holds the rules for repeated use and exposes the three phases
(`prepare`, `calibrate`, `convert`) so that you can, for example, fine-tune
between `prepare` and `convert` (quantization-aware training through the
straight-through estimator)."""),
    py("""
qz = dfc.Quantizer(ise(8, 4, 8))
prepared = qz.prepare(model)
qz.calibrate(prepared, calib, progress=False)
frozen = qz.convert(prepared)
type(frozen.net.stem_conv).__name__"""),
]

SENSITIVITY: list[Cell] = [
    md("""
# Sensitivity-allocated pruning

Pruning every layer by the same amount treats a fragile layer like a robust one.
A *sensitivity scan* prunes one layer at a time at several amounts and scores
the network's output on a small calibration batch; by default the score is the
cosine agreement with the unpruned model, so no labels are needed. `allocate`
then picks per-layer amounts whose parameter-weighted mean meets the global
target with the least total score drop."""),
    py(SETUP),
    py("""
import dfcompress as dfc
from dfcompress.demo import load_demo_bnext

model = load_demo_bnext()"""),
    py(DATA),
    py("""
from dfcompress.prune import allocate, scan

result = scan(model, calibration=calib, amounts=(0.25, 0.5, 0.75, 0.9), n_samples=16,
              progress=False)
result = allocate(result, 0.5)
print(f"{len(result.layers)} layers, {result.forward_passes} forward passes, "
      f"achieved {result.achieved:.3f}")"""),
    md("The result is typed; its table lists each layer's curve and chosen amount."),
    py("""
from IPython.display import Markdown

Markdown(result.to_markdown())"""),
    md("""
## The plot

Left: each layer's score as more of it is pruned. Right: the chosen amounts.
Layers whose curves stay flat absorb most of the pruning."""),
    py("""
import tempfile
from pathlib import Path

from IPython.display import Image

png = result.plot(Path(tempfile.mkdtemp()) / "sensitivity.png")
Image(filename=str(png))"""),
    md("""
## Apply it

`result.amounts` maps each layer's name to its chosen amount; `l1_unstructured`
applies such a mapping. (`dfc.prune(model, 0.5, sensitivity=True, calibration=...)`
does the scan, the allocation and this step in one call.) We compare with
uniform global L1 pruning at the same 50 %."""),
    py("""
from dfcompress.data import predict
from dfcompress.evaluate.metrics import auc
from dfcompress.prune import l1_unstructured, sparsity

uniform = dfc.prune(model, 0.5, progress=False)
allocated = l1_unstructured(model, result.amounts, scope="local")
for name, m in {"float": model, "global L1": uniform, "sensitivity": allocated}.items():
    p = predict(m, test, progress=False)
    print(f"{name:12s} sparsity {sparsity(m):.2f}   AUC {auc(p.labels, p.scores):.4f}")"""),
]

STRUCTURED: list[Cell] = [
    md("""
# Structured pruning and fine-tuning

Unstructured pruning zeroes weights: the file shrinks through sparse storage,
but a dense CPU kernel does the same work. *Structured* pruning removes whole
channels through torch-pruning's dependency graph, so parameters, MACs, file
size and latency really drop. It works on BNext too: a binary convolution loses
channels like a float one, and the SE branches, BatchNorms and PReLUs coupled
to it follow.

We prune the shipped BNext detector (trained, reading NPR features) by 50 % of
its channels three ways: in one shot, in one shot followed by re-estimating the
BatchNorm statistics, and in two steps with a short fine-tune after each."""),
    py(SETUP),
    py("""
from dfcompress.data import loader, predict, train_detector
from dfcompress.demo import load_demo_bnext
from dfcompress.evaluate.metrics import auc

model = load_demo_bnext()
train = loader("train", size=32, n=512, batch_size=64)
test = loader("test", size=32, n=192, batch_size=64)


def score(m: torch.nn.Module) -> float:
    p = predict(m, test, progress=False)
    return auc(p.labels, p.scores)"""),
    md("""
`steps=2` prunes 25 % and then 50 % (a linear schedule; `dfcompress.prune.cubic`
is the other built-in one, and any `(step, steps, target) -> amount` callable
works). The `finetune(model, step)` callback runs after each step; here it
trains one epoch on 512 images, which shows the mechanism rather than a recipe:
a real project fine-tunes longer, on its own data."""),
    py("""
import dfcompress as dfc

example = torch.rand(1, 3, 32, 32)


def finetune(m: torch.nn.Module, step: int) -> None:
    train_detector(m, train, epochs=1, lr=1e-3, progress=False, inplace=True)


variants = {
    "trained": model,
    "s50": dfc.prune(model, 0.5, method="structured", example_inputs=example, progress=False),
    "s50 + BN": dfc.prune(model, 0.5, method="structured", example_inputs=example,
                      recalibrate_bn=True, calibration=train, progress=False),
    "s50, 2 steps + fine-tune": dfc.prune(model, 0.5, method="structured",
                                      example_inputs=example, steps=2, finetune=finetune,
                                      progress=False),
}
for name, m in variants.items():
    r = dfc.measure(m, example, repeats=5)
    print(f"{name:25s} params {r.params:6d}  MACs {r.macs:8d}  file {r.size_mb:.3f} MB  "
          f"AUC {score(m):.4f}")"""),
    md("""
The output shape is unchanged: only hidden channels were removed, and the head
keeps its inputs (layers named by `ignore=`, the head by default, keep their
output channels). A graph that cannot be pruned raises a `DfcompressError`
naming the layer."""),
    py("""
print(model.net.stem_conv, "->", variants["s50"].net.stem_conv)"""),
]

FEATURES: list[Cell] = [
    md("""
# NPR and spectrum inputs

Generated images carry traces that an RGB detector must learn to find. Three
input features make them explicit:

* **NPR** (neighbouring pixel relationships): `x` minus a nearest-upsampled copy
  of its 2 x 2 subsampling. Up-sampling generators leave correlations between
  neighbouring pixels that NPR exposes.
* **Phase spectrum** (SPSL): the image rebuilt from the phase of its 2-D FFT
  alone, taken per image (never across the batch).
* **Magnitude spectrum**: `log(1 + |FFT|)`, centred, normalized per image.

`FeatureStack` concatenates RGB with any of them; `widen_stem` gives an existing
detector's first convolution the extra input channels."""),
    py(SETUP),
    py("""
from dfcompress.data import make_proxy
from dfcompress.features import NPR, FeatureStack, MagnitudeSpectrum, PhaseSpectrum

images, labels = make_proxy("val", size=64, n=8).tensors()
npr, phase, mag = NPR(scale=2 / 3), PhaseSpectrum(), MagnitudeSpectrum()
for f in (npr, phase, mag):
    out = f(images)
    print(f"{type(f).__name__:17s} {tuple(out.shape)}  std {out.std():.4f}")"""),
    md("One real and one fake image with their three features:"),
    py("""
import matplotlib.pyplot as plt

rows = [int((labels == 0).nonzero()[0]), int((labels == 1).nonzero()[0])]
fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for r, i in enumerate(rows):
    x = images[i : i + 1]
    panels = {"RGB": x[0].permute(1, 2, 0), "NPR": npr(x)[0].abs().mean(0),
              "phase": phase(x)[0, 0], "magnitude": mag(x)[0, 0]}
    for c, (title, img) in enumerate(panels.items()):
        axes[r, c].imshow(img.clamp(0, 1) if title == "RGB" else img, cmap="gray")
        axes[r, c].set_title(f"{'real' if r == 0 else 'fake'}: {title}", fontsize=9)
        axes[r, c].axis("off")
fig.tight_layout()"""),
    md("""
## Feed them to a detector

`FeatureStack` knows its output channels; `widen_stem` adds that many minus 3
input channels to a detector's first convolution. The new kernels start from
the mean of the RGB kernels, rescaled so the extra inputs do not swamp the RGB
response, and the RGB kernels are unchanged: with the extra channels zero, the
widened model computes exactly what the original did."""),
    py("""
from torch import nn

from dfcompress.features import widen_stem
from dfcompress.models import bnext

stack = FeatureStack([npr, phase, mag])
detector = bnext("tiny", num_classes=1).eval()
wide = widen_stem(detector, stack.out_channels - 3)
model = nn.Sequential(stack, wide).eval()
print(stack.out_channels, "input channels ->", wide.stem_conv)
with torch.no_grad():
    print(model(images[:2]).shape)"""),
    py("""
x = images[:2]
padded = torch.cat([x, torch.zeros(2, stack.out_channels - 3, 64, 64)], dim=1)
with torch.no_grad():
    print("same as the RGB model:", torch.allclose(wide(padded), detector(x), atol=1e-5))"""),
]

REPORT: list[Cell] = [
    md("""
# The comparison report

`dfc.compare` evaluates every variant on the same data and gathers what a deployment
decision needs: file size and reduction, AUC and its change against the
baseline, EER, confusion at 0.5, latency and memory, the samples whose decision
flipped, and Grad-CAM maps of each outcome. `Report.save(folder)` writes it as
markdown, HTML, JSON and PNG plots.

Variants can be models or recipe strings (applied to the baseline by
`dfc.compress`)."""),
    py(SETUP),
    py("""
import dfcompress as dfc
from dfcompress.demo import load_demo_bnext

model = load_demo_bnext()"""),
    py(DATA),
    py("""
# Models and recipe strings mix: "q8" is applied to the baseline by
# dfc.compress; p50 (global L1, no sensitivity scan, to keep this fast) is
# built once and quantized for the combination.
p50 = dfc.prune(model, 0.5, progress=False)
q8_p50 = dfc.quantize(p50, "int8", calibration=calib, progress=False)

report = dfc.compare(
    {"baseline": model, "q8": "q8", "p50": p50, "q8-p50": q8_p50},
    test,
    calibration=calib,
    measure_repeats=2,
    top_k=2,
    progress=False,
    notes=["proxy task, 32 px, 192 test images"],
)
for row in report.summary():
    print(row)"""),
    md("The insights are short sentences derived from the figures:"),
    py("""
for line in report.insights():
    print("-", line)"""),
    py("""
import tempfile
from pathlib import Path

folder = report.save(Path(tempfile.mkdtemp()) / "report")
sorted(p.name for p in folder.iterdir())"""),
    md("The markdown version, as it would appear in a pull request:"),
    py("""
from IPython.display import Markdown

Markdown(report.to_markdown())"""),
]

EXPORT: list[Cell] = [
    md("""
# Export to ONNX with real int8 kernels

A fake-quantized PyTorch model computes in float, so it is no faster. Exported
to ONNX as a QDQ graph (QuantizeLinear / DequantizeLinear pairs around each
quantized layer), ONNX Runtime fuses the pairs into integer convolutions and
matrix products. `export_onnx` writes the file, runs it in ONNX Runtime and
checks it against the eager model; the result (an `ExportResult`) lists the integer kernels ONNX
Runtime actually runs."""),
    py(SETUP),
    py("""
from torch import nn

import dfcompress as dfc

model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
).eval()
example = torch.rand(8, 3, 32, 32)
calib = torch.rand(64, 3, 32, 32)"""),
    py("""
import tempfile
from pathlib import Path

folder = Path(tempfile.mkdtemp())
q8 = dfc.quantize(model, "int8", calibration=calib, progress=False)
for name, m in {"float": model, "int8": q8}.items():
    r = dfc.export_onnx(m, folder / f"{name}.onnx", example)
    print(f"{name:5s} kind={r.kind:5s} {r.file_bytes:6d} bytes  "
          f"max diff {r.max_abs_diff:.2e}  agreement {r.agreement}")
    if r.int8_kernels:
        print("      integer kernels:", r.int8_kernels)"""),
    md("""
## Run the file

The exported file needs only `onnxruntime` (the `onnx` extra)."""),
    py("""
import onnxruntime as ort

session = ort.InferenceSession(str(folder / "int8.onnx"), providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
scores = session.run(None, {name: example.numpy()})[0]
with torch.no_grad():
    print("ONNX Runtime:", scores[:4].ravel().round(4))
    print("PyTorch:     ", q8(example)[:4].ravel().numpy().round(4))"""),
    md("""
## TorchScript

For runtimes that load TorchScript (PyTorch Mobile), `dfc.export_torchscript`
traces the model and checks the file in the same way."""),
    py("""
r = dfc.export_torchscript(q8, folder / "int8.pt", example)
print(r.format, r.exporter, f"{r.file_bytes} bytes, max diff {r.max_abs_diff:.2e}")"""),
]

NOTEBOOKS: dict[str, list[Cell]] = {
    "01_quickstart": QUICKSTART,
    "02_quantize_bnext_ise": BNEXT_ISE,
    "03_sensitivity_pruning": SENSITIVITY,
    "04_structured_pruning_finetune": STRUCTURED,
    "05_npr_and_spectrum_inputs": FEATURES,
    "06_comparison_report": REPORT,
    "07_export_onnx": EXPORT,
}


def build(cells: list[Cell]) -> nbformat.NotebookNode:
    """A notebook (no outputs) with a Python 3 kernel."""
    nb = new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [
        new_markdown_cell(s) if k == "md" else new_code_cell(s)  # type: ignore[no-untyped-call]
        for k, s in cells
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return cast("nbformat.NotebookNode", nb)


def write(names: list[str]) -> list[Path]:
    """Write the named notebooks next to this script (no outputs), formatted by ruff."""
    paths = []
    for name in names:
        nb = build(NOTEBOOKS[name])
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)  # type: ignore[no-untyped-call]
        paths.append(path)
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", *map(str, paths)], check=True)
    return paths


def execute(path: Path) -> float:
    """Run a notebook top to bottom in a fresh kernel and store its outputs; the seconds taken."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        record_timing=False,  # no timestamps: a re-run changes only what the cells print
        resources={"metadata": {"path": str(HERE)}},
    )
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]
    return seconds


def main(argv: list[str] | None = None) -> None:
    """Write the notebooks; with ``--execute``, also run them and store their outputs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebooks to write (default: all)")
    ap.add_argument("--execute", action="store_true", help="run them and store outputs")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        ap.error(f"unknown notebooks {unknown}: use {sorted(NOTEBOOKS)}")
    for path in write(args.names or list(NOTEBOOKS)):
        if args.execute:
            print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main()
