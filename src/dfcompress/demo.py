"""``dfcompress demo``: a real-sized detector on the proxy task, compressed and compared.

The demo detector (:func:`~dfcompress.data.detectors.npr_resnet`) is a float
SE-ResNet of 1.24M parameters (dense 3x3 and 1x1 convolutions, BatchNorm, ReLU,
squeeze-and-excitation gates) reading NPR features: ``x - up(down(x))`` over
2x2 windows, the traces an up-sampling generator leaves, scaled by 2/3 as in
the published NPR detector. A checkpoint trained at 64 px on the built-in proxy
task by ``scripts/train_demo_detector.py`` ships with the package (weights
stored in float16, 2.5 MB; :func:`load_demo_detector` returns the float32
model).

:func:`run_demo` builds the variants of :data:`DEMO_RECIPES` and writes the
comparison report.

The earlier demo detector, a small BNext (binary convolutions, 0.13 MB packed)
at 32 px, still ships: :func:`load_demo_bnext` (built by :func:`demo_detector`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import DfcompressError
from dfcompress.features import NPR
from dfcompress.io._registry import register_factory
from dfcompress.models import BinaryConv2d, BNext

if TYPE_CHECKING:
    from dfcompress.report import Report

__all__ = [
    "DEMO_BNEXT_SIZE",
    "DEMO_CHANNELS",
    "DEMO_RECIPES",
    "DEMO_SIZE",
    "DEMO_TRAIN",
    "DEMO_WIDTHS",
    "ORT_BASELINE",
    "SPARSE_FILE_MIN",
    "NprDetector",
    "checkpoint_path",
    "demo_detector",
    "load_demo_bnext",
    "load_demo_detector",
    "run_demo",
    "train_demo_detector",
    "unpack_binary",
]

DEMO_CHANNELS: tuple[int, ...] = (16, 32, 64, 64, 128)
"""Stem width, then the output channels of each block of the BNext demo detector
(:func:`demo_detector`, :func:`load_demo_bnext`)."""

DEMO_SIZE = 64
"""Image side (pixels) the demo detector is trained and evaluated at."""

DEMO_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)
"""Stage widths of the demo detector's SE-ResNet (1.24M parameters)."""

DEMO_TRAIN: dict[str, int] = {"n_train": 2000, "epochs": 2}
"""Training set size and epochs of the shipped demo checkpoint."""

DEMO_RECIPES: tuple[str, ...] = (
    "q16",
    "q8",
    "q4",
    "p50",
    "s50",
    "q16-p50",
    "q8-p50",
    "ise8-4-8",
)
"""The variants :func:`run_demo` compares with the baseline."""

_CHECKPOINT = "demo_detector.safetensors"
_BNEXT_CHECKPOINT = "demo_bnext.safetensors"

DEMO_BNEXT_SIZE = 32
"""Image side (pixels) the shipped BNext checkpoint (:func:`load_demo_bnext`) was trained at."""


class NprDetector(nn.Module):
    """A detector that feeds NPR features (2x2 windows, pixel 0, scaled by 2/3 as
    published) of its RGB input to a BNext.

    Args:
        channels: BNext stem width then block widths (each equal to or double the last).
        num_classes: 1 (one fake-vs-real logit) or 2.

    >>> NprDetector((8, 16), 1)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """

    def __init__(self, channels: Sequence[int] = DEMO_CHANNELS, num_classes: int = 1) -> None:
        super().__init__()
        self.npr = NPR(window=2, pixel=0, scale=2.0 / 3.0)
        self.net = BNext(tuple(int(c) for c in channels), num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of an ``[N, 3, H, W]`` batch in [0, 1]."""
        out: torch.Tensor = self.net(self.npr(x))
        return out


@register_factory
def demo_detector(channels: Sequence[int] = DEMO_CHANNELS, num_classes: int = 1) -> NprDetector:
    """A randomly initialised :class:`NprDetector` that :func:`dfcompress.load` can rebuild.

    >>> demo_detector().dfc_constructor["factory"]
    'dfcompress.demo:demo_detector'
    """
    model = NprDetector(channels, num_classes)
    set_constructor(
        model,
        "dfcompress.demo:demo_detector",
        channels=[int(c) for c in channels],
        num_classes=num_classes,
    )
    return model


def unpack_binary(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn packed :class:`~dfcompress.models.BinaryConv2d` layers back into trainable ones.

    The latent float weight becomes ``alpha * sign``, which binarizes to the
    same ``alpha`` and signs, so the outputs are unchanged.

    >>> from dfcompress.models import pack_binary
    >>> net = demo_detector((8, 16)).eval()
    >>> x = torch.rand(1, 3, 32, 32)
    >>> torch.equal(unpack_binary(pack_binary(net))(x), net(x))
    True
    """
    import copy

    out = model if inplace else copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, BinaryConv2d) and m.weight is None:
            w = m.binary_weight().detach().clone()
            m.weight_bits = None
            m.weight_scale = None
            m.weight = nn.Parameter(w)
            m.packed = False
    return out


def checkpoint_path(name: str = _CHECKPOINT) -> Path:
    """Where a shipped checkpoint (the demo detector's by default) lives in the package."""
    return Path(str(resources.files("dfcompress") / "_assets" / name))


def load_demo_detector(path: str | Path | None = None, *, unpack: bool = True) -> nn.Module:
    """Load the demo detector (the shipped checkpoint by default) in float32 and eval mode.

    Args:
        path: A checkpoint written by ``scripts/train_demo_detector.py``
            (or any :func:`dfcompress.save` file).
        unpack: Turn packed binary convolutions (a BNext file) back into
            trainable ones; a float detector has none.

    Raises:
        DfcompressError: the file is missing.

    >>> net = load_demo_detector()
    >>> sum(p.numel() for p in net.parameters()), net(torch.rand(1, 3, 64, 64)).shape
    (1238177, torch.Size([1, 1]))
    """
    from dfcompress.io import load

    p = Path(path) if path is not None else checkpoint_path()
    if not p.is_file():
        raise DfcompressError(
            f"no demo checkpoint at {p}: run scripts/train_demo_detector.py, "
            "or `dfcompress demo --train`"
        )
    model = load(p).float().eval()
    return unpack_binary(model, inplace=True) if unpack else model


def load_demo_bnext(*, unpack: bool = True) -> nn.Module:
    """The small BNext NPR detector (:func:`demo_detector`) trained on the proxy task at
    :data:`DEMO_BNEXT_SIZE` px, shipped with its binary weights packed at 1 bit.

    Args:
        unpack: Turn the packed binary convolutions back into trainable ones
            (:func:`unpack_binary`), so that the float layers can be compressed.

    >>> net = load_demo_bnext()
    >>> net(torch.rand(1, 3, DEMO_BNEXT_SIZE, DEMO_BNEXT_SIZE)).shape
    torch.Size([1, 1])
    """
    return load_demo_detector(checkpoint_path(_BNEXT_CHECKPOINT), unpack=unpack)


def train_demo_detector(
    *,
    size: int = DEMO_SIZE,
    n_train: int = DEMO_TRAIN["n_train"],
    epochs: int = DEMO_TRAIN["epochs"],
    batch_size: int = 64,
    lr: float = 3e-3,
    widths: Sequence[int] = DEMO_WIDTHS,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train the demo detector (:func:`~dfcompress.data.detectors.npr_resnet`) on the
    proxy task's train split (deterministic for a seed).

    Returns the model in eval mode.
    """
    from dfcompress.data import loader, train_detector
    from dfcompress.data.detectors import npr_resnet

    torch.manual_seed(seed)
    model = npr_resnet(widths)
    data = loader("train", size=size, n=n_train, batch_size=batch_size, seed=seed)
    trained = train_detector(
        model, data, epochs=epochs, lr=lr, progress=progress, inplace=True, seed=seed
    )
    _center_threshold(trained, loader("val", size=size, n=500, batch_size=250, seed=seed))
    return trained.eval()


def _center_threshold(model: nn.Module, val: Any) -> None:
    """Shift the head's bias so that P(fake) = 0.5 is the most accurate threshold on ``val``.

    A briefly trained detector ranks well (AUC) but its logits are offset, so the
    report's confusion table at 0.5 would call most fakes real. A constant shift
    of the logit changes no ranking, so no AUC.
    """
    import numpy as np

    from dfcompress.data import predict

    head = model[-1].fc if isinstance(model, nn.Sequential) else None
    if not isinstance(head, nn.Linear) or head.bias is None or head.out_features != 1:
        return
    p = predict(model, val, progress=False)
    z, y = p.logodds, p.labels
    cuts = np.unique(z)
    # Accuracy of "fake iff z > t" for t at each distinct logit.
    acc = [((z > t) == (y == 1)).mean() for t in cuts]
    i = int(np.argmax(acc))
    t = (cuts[i] + cuts[i + 1]) / 2 if i + 1 < len(cuts) else cuts[i]
    with torch.no_grad():
        head.bias.sub_(float(t))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _merged_history(model: nn.Module, pruning: str, recipe: str) -> list[dict[str, Any]]:
    """One history entry for ``recipe`` in place of its pruning and quantization entries."""
    from dfcompress.recipe import parse_recipe

    hist: list[dict[str, Any]] = [dict(e) for e in getattr(model, "dfc_history", [])]
    if not hist:
        return hist
    last = hist[-1]
    last["recipe"] = recipe
    last["steps"] = parse_recipe(recipe).as_dict()["steps"]
    return [e for e in hist[:-1] if e.get("recipe") != pruning] + [last]


def run_demo(
    out: str | Path = "dfcompress-demo",
    *,
    train: bool = False,
    quick: bool = False,
    recipes: Sequence[str] = DEMO_RECIPES,
    n_test: int | None = None,
    threads: int | None = 1,
    progress: bool = True,
    deployed: bool = True,
) -> Report:
    """Compress the demo detector to :data:`DEMO_RECIPES`, compare the variants, save the report.

    Args:
        out: Folder for ``report.md``, ``report.html``, ``report.json`` and the PNGs.
        train: Train the detector now instead of loading the shipped checkpoint
            (also done when the checkpoint is missing).
        quick: Small test and calibration subsets and a one-epoch training,
            for a smoke test of about a CPU-minute.
        recipes: The variants besides the baseline.
        n_test: Test samples (default 400, or 64 with ``quick``).
        threads: torch intra-op threads while the demo runs (restored after);
            one thread is kind to a shared CPU. None
            keeps torch's setting.
        progress: Show progress bars.
        deployed: Evaluate every variant as it ships (the ``mobile`` and ``onnx`` extras):
            int8 variants are quantized for XNNPACK and written as ExecuTorch
            ``.pte`` files, float and pruned ones as float ``.pte`` files, and the
            variants no phone runtime has kernels for (16-bit casts, 4-bit weights)
            as TorchScript files; each file is scored, timed and sized in its
            runtime. False: the eager models only.

    Returns:
        The :class:`~dfcompress.report.Report` (also written to ``out``).
    """
    from dfcompress._extras import require_extras
    from dfcompress.recipe import parse_recipe

    require_extras(
        "report", "demo", *(("mobile", "onnx") if deployed else ()), what="dfcompress demo"
    )
    for r in recipes:
        parse_recipe(r)  # fail on a typo before any work
    if threads is not None and threads < 1:
        raise DfcompressError(f"threads={threads} is invalid: use a positive count or None")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(Path(out), train, quick, tuple(recipes), n_test, progress, deployed)
    finally:
        torch.set_num_threads(old_threads)


ORT_BASELINE = "baseline-ort"
"""The deployed demo's row of the float baseline run by ONNX Runtime (a reference for the
variants that ship as ONNX files)."""

SPARSE_FILE_MIN = 0.2
"""Fraction of zero conv/linear weights from which a float demo variant ships as ONNX,
whose file stores pruned weights sparse (an ExecuTorch file stores every zero)."""


def _runtime(model: nn.Module) -> str:
    """Where a demo variant runs.

    Its own target when it was quantized for one; ONNX Runtime for 16-bit weights
    (stored in 16 bits, computed in float32 on CPUs without 16-bit arithmetic) and for
    unstructured-pruned weights (stored sparse); TorchScript for fake-quantized layers
    no phone runtime has kernels for (4-bit weights); else XNNPACK.
    """
    from dfcompress.deploy._targets import target_of
    from dfcompress.prune import sparsity
    from dfcompress.quant.modules import QuantLayer

    own = target_of(model)
    if own is not None:
        return own
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        return "torchscript"
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        return "onnxruntime"
    return "onnxruntime" if sparsity(model) >= SPARSE_FILE_MIN else "xnnpack"


def _run(
    out: Path,
    train: bool,
    quick: bool,
    recipes: tuple[str, ...],
    n_test: int | None,
    progress: bool,
    deployed: bool,
) -> Report:
    from dfcompress.data import loader, make_proxy
    from dfcompress.recipe import Prune, Quantize, compress, parse_recipe
    from dfcompress.report import compare

    t0 = time.perf_counter()
    n_test = n_test if n_test is not None else (64 if quick else 400)
    n_calib = 32 if quick else 128
    notes = [
        "Data: the dfcompress proxy task (crops of scikit-image photographs; fakes are "
        "crops down-sampled and brought back by nearest, bilinear, transposed-convolution "
        "or pixel-shuffle up-sampling). It is a stand-in, not a deepfake data set.",
        f"Resolution {DEMO_SIZE}x{DEMO_SIZE}; test subset of {n_test} samples (test split); "
        f"calibration on {n_calib} samples of the validation split.",
    ]
    shipped = checkpoint_path()
    if train or not shipped.is_file():
        epochs, n_train = (1, 256) if quick else (DEMO_TRAIN["epochs"], DEMO_TRAIN["n_train"])
        baseline = train_demo_detector(epochs=epochs, n_train=n_train, progress=progress)
        notes.append(
            f"Baseline: NPR + SE-ResNet detector ({_params(baseline) / 1e6:.2f}M parameters) "
            f"trained now ({epochs} epoch(s) on {n_train} samples)."
        )
    else:
        baseline = load_demo_detector(shipped)
        notes.append(
            f"Baseline: the NPR + SE-ResNet detector ({_params(baseline) / 1e6:.2f}M "
            "parameters, dense 3x3/1x1 convolutions with BatchNorm and ReLU) shipped with "
            "dfcompress, trained by scripts/train_demo_detector.py."
        )
    calib_images, _ = make_proxy("val", size=DEMO_SIZE, n=n_calib).tensors()
    variants: dict[str, nn.Module] = {"baseline": baseline}
    # Pruning runs first in every recipe and is deterministic, so "q8-p50" is
    # "q8" applied to the "p50" model: each pruning (and its sensitivity scan) runs once.
    pruned: dict[str, nn.Module] = {}
    for r in recipes:
        steps = parse_recipe(r).ordered()
        cut = [s for s in steps if isinstance(s, Prune)]
        rest = [s for s in steps if not isinstance(s, Prune)]
        key = "-".join(str(s) for s in cut)
        # int8 is what XNNPACK runs as integers: quantize those variants for it.
        xnn = deployed and any(isinstance(s, Quantize) and s.config_name == "int8" for s in rest)
        opts: dict[str, Any] = {"target": "xnnpack"} if xnn else {}
        if cut and rest:
            if key not in pruned:
                pruned[key] = compress(baseline, key, calib_images, progress=progress)
            start = pruned[key]
            small = compress(
                start, "-".join(str(s) for s in rest), calib_images, progress=progress, **opts
            )
            small.dfc_history = _merged_history(small, key, r)  # type: ignore[assignment]
        else:
            small = compress(baseline, r, calib_images, progress=progress, **opts)
            if cut and not rest:
                pruned.setdefault(key, small)
        variants[r] = small
    if any(r.startswith("ise") for r in recipes):
        notes.append(
            "ise8-4-8 is the BNext preset (stem at 8 bits, squeeze-and-excitation layers at "
            "4, head at 8; a BNext's binary body convolutions are 1-bit already): on this "
            "float SE-ResNet it leaves the body convolutions float, so its file stays near "
            "the float size (see the Model section's per-variant summary)."
        )
    test = loader("test", size=DEMO_SIZE, n=n_test, batch_size=100)
    targets = {name: _runtime(m) for name, m in variants.items()} if deployed else None
    if targets is not None and "onnxruntime" in targets.values():
        # The float baseline in ONNX Runtime too: what the runtime alone changes, so that
        # an ONNX variant's speed-up over the XNNPACK baseline is not read as compression.
        variants = {"baseline": baseline, ORT_BASELINE: baseline, **variants}
        targets[ORT_BASELINE] = "onnxruntime"
    if deployed:
        notes.append(
            "Deployed: int8 variants are quantized for XNNPACK and run as ExecuTorch .pte "
            "files, the float baseline and channel-pruned variants as float .pte files; "
            "16-bit variants and unstructured-pruned float ones run as ONNX files in ONNX "
            "Runtime (16-bit weights computed in float32 on this CPU; pruned weights stored "
            "sparse, made dense when the file loads); 4-bit weights, which phone runtimes "
            "have no convolution kernels for, run as TorchScript files. AUC, latency, file "
            "size and memory are those of the files; speed-ups are against the baseline's "
            f"XNNPACK file ({ORT_BASELINE} is the same float model in ONNX Runtime)."
        )
    report = compare(
        variants,
        test,
        video=False,
        progress=progress,
        deployed=deployed,
        target=targets,
        measure_repeats=3 if quick else 10,
        title="dfcompress demo: NPR + SE-ResNet detector on the proxy task",
        notes=notes,
    )
    report.notes.append(
        f"Variants built and evaluated in {time.perf_counter() - t0:.0f} s on this machine "
        f"({torch.get_num_threads()} torch thread(s))."
    )
    report.save(out)
    return report
