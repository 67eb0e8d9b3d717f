"""Deployment benchmark: what ships, in each runtime, side by side with the runtimes' own tools.

For each baseline (the packaged NPR+BNext demo detector and every trained checkpoint
under ``$DFC_BASELINES``, e.g. EfficientNet-B0) and each target it writes, with
:func:`dfcompress.export`, and runs in that target's runtime:

- ``float``: the model as trained;
- ``dfc int8``: ``quantize(model, "int8", calib, target=t)`` (post-training; the
  default bias correction: on for networks with depthwise convolutions);
- ``dfc int8 + bias corr.`` (``dfc int8, no bias corr.`` where the default corrects):
  the same with bias correction the other way round (each int8 layer's mean output
  error on the calibration images subtracted from its bias);
- ``dfc int8 + QAT``: the same with one epoch of quantization-aware distillation from
  the float model, half soft targets, half labels (``quantize(..., finetune=...)``:
  the calibrated target model trains before it is frozen);
- ``s50``: 50 % of the channels removed by structured pruning, then one epoch of
  distillation from the unpruned model (float);
- ``s50 + int8``: that model quantized for the target (post-training);

and the peers, on the same checkpoint and the same calibration images:

- xnnpack: ExecuTorch's own ``XNNPACKQuantizer`` PT2E flow, lowered with the XNNPACK
  partitioner;
- onnxruntime: ONNX Runtime ``quantize_static`` (QDQ, per-channel int8 weights) on the
  float file;
- openvino (reference): NNCF ``nncf.quantize`` of the float file's OpenVINO model, when
  ``nncf`` and ``openvino`` import.

Columns: eager AUC (the model before export; n/a for file-only tools), deployed AUC
(the file run in its runtime), the fraction of test decisions the file shares with
its eager model, the deployed AUC's difference from the same runtime's float file,
speed-up over that float file at batch 1 and batch 32 (median per-image latency,
every file of a runtime timed round by round in a fresh process that loads them, each
timed run right after three untimed runs of the same file), latency, file MB and the peak RSS of a
fresh process that loads the file and runs one image. A target whose dfcompress module
is not installed is skipped with the reason; its peers still run. The xnnpack rows
need ExecuTorch (the ``mobile`` extra); the EfficientNet-B0 checkpoint is
dfcompress's own EfficientNet (timm's layout, no timm needed):
``python benchmarks/deploy.py`` (``--quick`` for a smoke run on tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _deploy_peers as peers
from _results import RESULTS, machine_line, markdown_table, update_section
from dfcompress import export
from dfcompress.data import loader
from dfcompress.demo import DEMO_SIZE, load_demo_detector
from dfcompress.deploy import Artifact
from dfcompress.deploy._targets import target_module
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.metrics import auc
from dfcompress.io import load
from dfcompress.prune.distill import distill, distill_finetune
from dfcompress.prune.structured import prune_channels
from dfcompress.quant import quantize
from dfcompress.quant.api import auto_bias_correction
from dfcompress.report._scoring import scores_of

TARGETS = ("xnnpack", "onnxruntime")
#: Every runtime column value, in table order (openvino: the NNCF reference).
RUNTIMES = (*TARGETS, "openvino")
SUFFIX = {"xnnpack": ".pte", "onnxruntime": ".onnx"}
QAT_LR, QAT_EPOCHS, QAT_IMAGES = 3e-5, 1, 2000
#: Weight of the distillation term in QAT (the rest: the label loss). Chosen on 1000
#: validation images that are neither calibration nor test images (trained BNext,
#: xnnpack; validation AUC): alpha 1.0 0.9340, 0.7 0.9347, 0.5 0.9351.
QAT_ALPHA = 0.5
PRUNE_LR = 1e-3
#: export options: no agreement floor (the benchmark reports what each file reaches)
LOOSE: dict[str, Any] = {"atol": 1e3, "min_agreement": 0.0}
HEADERS = [
    "model",
    "runtime",
    "variant",
    "eager AUC",
    "deployed AUC",
    "decisions = eager",
    "diff vs float",
    "speed-up b1",
    "speed-up b32",
    "ms/img b1",
    "ms/img b32",
    "file MB",
    "peak RSS MB",
]


def baselines(quick: bool, only: list[str]) -> tuple[dict[str, tuple[nn.Module, int]], list[str]]:
    """name -> (model in eval mode, side it was trained at); and the skipped ones."""
    out: dict[str, tuple[nn.Module, int]] = {}
    skipped: list[str] = []
    if not only or "demo_seresnet" in only:
        out["demo_seresnet"] = (load_demo_detector().eval(), DEMO_SIZE)
    ckpts = Path(os.environ.get("DFC_BASELINES", Path.home() / ".cache/dfcompress/baselines"))
    meta_file = ckpts / "baselines.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    for f in sorted(ckpts.glob("*.safetensors")):
        if quick or (only and f.stem not in only):
            continue
        try:
            out[f.stem] = (load(f).eval(), int(meta.get(f.stem, {}).get("size", DEMO_SIZE)))
        except DfcompressError as e:  # e.g. timm is not installed here
            skipped.append(f"{f.stem}: {str(e).splitlines()[0][:120]}")
    return out, skipped


def export_to(model: nn.Module, path: Path, ex: torch.Tensor, target: str) -> Artifact:
    opts: dict[str, Any] = dict(LOOSE)
    if target == "xnnpack":
        opts["max_batch"] = peers.MAX_BATCH
    return export(model, path, ex, target=target, **opts)


def eager_scores(model: nn.Module | None, images: torch.Tensor) -> torch.Tensor | None:
    if model is None:
        return None
    with torch.inference_mode():
        return torch.cat([scores_of(model(images[i : i + 32])) for i in range(0, len(images), 32)])


def deployed_scores(art: Artifact, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores_of(art.run(images[i : i + 32])) for i in range(0, len(images), 32)])


def dfc_models(
    target: str, model: nn.Module, pruned: nn.Module, calib: torch.Tensor, train: Any
) -> dict[str, Callable[[], nn.Module]]:
    """The dfcompress variants of one target, each built when called (eager models)."""
    q = {"calibration": calib, "progress": False, "target": target}

    def qat() -> nn.Module:
        ft = distill_finetune(
            model, train, epochs=QAT_EPOCHS, lr=QAT_LR, alpha=QAT_ALPHA, progress=False
        )
        return quantize(model, "int8", finetune=ft, **q)

    # the row beside the default: bias correction the other way round
    corrected = auto_bias_correction(model, [n for n, _ in model.named_modules()], True, None)
    other = "dfc int8, no bias corr." if corrected else "dfc int8 + bias corr."
    return {
        "float": lambda: model,
        "dfc int8": lambda: quantize(model, "int8", **q),
        other: lambda: quantize(model, "int8", bias_correction=not corrected, **q),
        "dfc int8 + QAT": qat,
        "s50": lambda: pruned,
        "s50 + int8": lambda: quantize(pruned, "int8", **q),
    }


def runtime_rows(
    runtime: str,
    files: dict[str, tuple[nn.Module | None, Artifact]],
    test: tuple[torch.Tensor, Any],
    shape: tuple[int, ...],
    reps: tuple[int, int],
) -> list[list[object]]:
    """Deployed AUC, interleaved latency and fresh-process RSS of one runtime's files."""
    images, labels = test
    x = images[: peers.MAX_BATCH]
    arts = {k: a for k, (_, a) in files.items()}
    lat1 = peers.timed(arts, x, batches=(1,), repeats=reps[0])
    lat32 = peers.timed(arts, x, batches=(32,), repeats=reps[1])
    f_art = files["float"][1] if "float" in files else None
    float_auc = auc(labels, deployed_scores(f_art, images).numpy()) if f_art else None
    rows: list[list[object]] = []
    for name, (eager, art) in files.items():
        d_scores = deployed_scores(art, images)
        d_auc = auc(labels, d_scores.numpy())
        rss = peers.child_peak_rss(runtime, art.path, shape)
        e_scores = eager_scores(eager, images)
        e_auc = None if e_scores is None else auc(labels, e_scores.numpy())
        same = None if e_scores is None else ((e_scores > 0.5) == (d_scores > 0.5)).double()
        b1, b32 = lat1[name][1], lat32[name][32]
        f1 = lat1["float"][1] if "float" in lat1 else None
        f32 = lat32["float"][32] if "float" in lat32 else None
        rows.append(
            [
                runtime,
                name,
                "n/a" if e_auc is None else f"{e_auc:.4f}",
                f"{d_auc:.4f}",
                "n/a" if same is None else f"{float(same.mean()):.4f}",
                "-" if float_auc is None or name == "float" else f"{d_auc - float_auc:+.4f}",
                f"{f1 / b1:.2f}x" if f1 else "n/a",
                f"{f32 / b32:.2f}x" if f32 else "n/a",
                f"{b1:.3f}",
                f"{b32:.3f}",
                f"{art.size_bytes / 1e6:.3f}",
                "n/a" if rss is None else f"{rss / 1e6:.0f}",
            ]
        )
        print("  ", rows[-1], flush=True)
    return rows


def bench_baseline(
    bname: str,
    model: nn.Module,
    size: int,
    out: Path,
    quick: bool,
    reps: tuple[int, int],
    targets: list[str],
) -> tuple[list[list[object]], list[str]]:
    """Every runtime's rows for one baseline, and the notes (skips, export figures)."""
    n_cal, n_test, n_train = (16, 32, 16) if quick else (256, 1000, QAT_IMAGES)
    calib = next(iter(loader("val", size=size, n=n_cal, batch_size=n_cal)))[0]
    test = next(iter(loader("test", size=size, n=n_test, batch_size=n_test)))
    images, labels = test[0], test[1].numpy()
    train = loader("train", size=size, n=n_train, batch_size=32)
    shape = tuple(images.shape[1:])
    ex = calib[:8]
    notes: list[str] = []
    t0 = time.time()
    pruned = distill(
        prune_channels(model, 0.5, example_inputs=ex),
        model,
        train,
        epochs=1,
        lr=PRUNE_LR,
        progress=False,
    )
    notes.append(f"s50 distillation {time.time() - t0:.0f} s")
    rows: list[list[object]] = []
    float_onnx: Path | None = None
    for target in targets:
        files: dict[str, tuple[nn.Module | None, Artifact]] = {}
        missing = peers.target_missing(target)
        sfx = SUFFIX[target]
        if missing is None:
            for name, make in dfc_models(target, model, pruned, calib, train).items():
                path = out / f"{bname}-{target}-{re.sub(r'[^a-z0-9]+', '_', name)}{sfx}"
                try:
                    m = make()
                    art = export_to(m, path, ex, target)
                except Exception as e:  # a failure is a row's finding, not the run's end
                    why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    notes.append(f"{target} {name}: quantize/export failed: {why}")
                    print(f"{bname}: {target} {name} failed: {why}", flush=True)
                    continue
                files[name] = (m, art)
                a = art.agreement
                if a is not None:
                    notes.append(
                        f"{target} {name}: max abs diff {a.max_abs_diff:.3g}, decision "
                        f"agreement {a.agreement}"
                    )
        else:
            notes.append(f"{target} dfcompress rows skipped: {missing}")
            print(f"{bname}: {target} dfcompress rows skipped: {missing}", flush=True)
        load = target_module(target).load_artifact if missing is None else None
        try:
            if target == "xnnpack":
                p = out / f"{bname}-pt2e.pte"
                eager = peers.pt2e_xnnpack(model, calib, p)
                peer: tuple[nn.Module | None, Path] = (eager, p)
                label = "ExecuTorch XNNPACKQuantizer (PT2E)"
            else:
                if "float" in files:
                    float_onnx = files["float"][1].path
                else:  # no onnxruntime target here: the float file from the plain exporter
                    from dfcompress.deploy import export_onnx

                    float_onnx = export_onnx(
                        model, out / f"{bname}-f.onnx", ex, dynamic_size=True
                    ).path
                    files["float"] = (model, peers.plain_artifact(target, float_onnx))
                p = out / f"{bname}-ort-qs.onnx"
                peers.ort_quantize_static(float_onnx, p, calib)
                peer, label = (None, p), "ORT quantize_static"
            art = load(p) if load is not None else peers.plain_artifact(target, p)
            files[label] = (peer[0], art)
        except Exception as e:  # a peer's own failure is a finding, not a crash
            notes.append(f"{target} peer failed: {type(e).__name__}: {str(e)[:160]}")
            print(f"{bname}: {target} peer failed: {e}", flush=True)
        if files:
            try:
                for r in runtime_rows(target, files, (images, labels), shape, reps):
                    rows.append([bname, *r])
            except Exception as e:  # a runner that fails on a batch: say so, go on
                notes.append(f"{target} measurement failed: {type(e).__name__}: {str(e)[:160]}")
                print(f"{bname}: {target} measurement failed: {e}", flush=True)
    why = peers.nncf_available()
    if why is None and float_onnx is not None:
        ov_files = peers.nncf_openvino(float_onnx, out, calib)
        files = {k: (None, peers.plain_artifact("openvino", p)) for k, p in ov_files.items()}
        for r in runtime_rows("openvino", files, (images, labels), shape, reps):
            rows.append([bname, *r])
    else:
        notes.append(f"openvino (reference) skipped: {why or 'no float ONNX file'}")
    return rows, notes


#: The issue's targets per baseline: int8 speed-up over the XNNPACK float file at batch 1.
SPEED_TARGETS = {"bnext": 2.0, "efficientnet_b0": 1.5}
S50_INT8_TARGET = 3.5
PTQ_DROP, QAT_DROP, AGREEMENT, EAGER_AUC_GAP = 0.005, 0.002, 0.995, 0.002
PEERS = ("ExecuTorch XNNPACKQuantizer (PT2E)", "ORT quantize_static", "NNCF int8")


def _num(cell: str) -> float | None:
    try:
        return float(cell.rstrip("x"))
    except ValueError:
        return None


def target_lines(rows: list[list[str]]) -> list[str]:
    """Each target of the deployment benchmark, met or NO with its figure, per baseline.

    Derived from the table's rows alone (cells as written): eager = deployed, the
    post-training and QAT AUC drops, no peer above the PTQ file, the XNNPACK speed-ups
    and ONNX Runtime against ``quantize_static``.
    """

    def yes(ok: bool) -> str:
        return "met" if ok else "NO"

    out: list[str] = []
    for model in SPEED_TARGETS:
        mine = [r for r in rows if r[0] == model]
        if not mine:
            continue
        cell = {(r[1], r[2]): r for r in mine}
        parts: list[str] = []
        # (eager AUC, deployed AUC, decisions = eager) of every dfcompress file with an eager model
        pairs = [(_num(r[3]), _num(r[4]), _num(r[5])) for r in mine if r[2].startswith("dfc")]
        checked = [
            (e, d, a) for e, d, a in pairs if e is not None and d is not None and a is not None
        ]
        if checked:
            worst_agree = min(a for _, _, a in checked)
            worst_gap = max(abs(e - d) for e, d, _ in checked)
            ok = worst_agree >= AGREEMENT and worst_gap <= EAGER_AUC_GAP
            parts.append(
                f"eager = deployed (agreement >= {AGREEMENT}, AUC within {EAGER_AUC_GAP}): "
                f"{yes(ok)} (lowest {worst_agree:.4f}, largest gap {worst_gap:.4f})"
            )
        for runtime in TARGETS:
            ptq, qat = cell.get((runtime, "dfc int8")), cell.get((runtime, "dfc int8 + QAT"))
            if ptq is not None and _num(ptq[6]) is not None:
                d = _num(ptq[6]) or 0.0
                parts.append(f"{runtime} PTQ drop <= {PTQ_DROP}: {yes(-d <= PTQ_DROP)} ({d:+.4f})")
            if qat is not None and _num(qat[6]) is not None:
                d = _num(qat[6]) or 0.0
                parts.append(f"{runtime} QAT drop <= {QAT_DROP}: {yes(-d <= QAT_DROP)} ({d:+.4f})")
        peer_aucs = [(_num(r[4]), r[2]) for r in mine if r[2] in PEERS]
        best = max(
            ((a, n) for a, n in peer_aucs if a is not None), key=lambda p: p[0], default=None
        )
        for runtime in TARGETS:
            ptq = cell.get((runtime, "dfc int8"))
            if ptq is None or best is None:
                continue
            a = _num(ptq[4]) or 0.0
            parts.append(
                f"{runtime} PTQ AUC >= every peer's: {yes(a >= best[0])} "
                f"({a:.4f}; best peer {best[1]} {best[0]:.4f})"
            )
        x_int8, x_s50 = cell.get(("xnnpack", "dfc int8")), cell.get(("xnnpack", "s50 + int8"))
        if x_int8 is not None:
            sp = _num(x_int8[7]) or 0.0
            goal = SPEED_TARGETS[model]
            parts.append(f"xnnpack int8 b1 speed-up >= {goal}x: {yes(sp >= goal)} ({sp:.2f}x)")
        if x_s50 is not None:
            sp = _num(x_s50[7]) or 0.0
            parts.append(
                f"xnnpack s50 + int8 b1 speed-up >= {S50_INT8_TARGET}x: "
                f"{yes(sp >= S50_INT8_TARGET)} ({sp:.2f}x)"
            )
        o_int8, o_qs = cell.get(("onnxruntime", "dfc int8")), cell.get(("onnxruntime", PEERS[1]))
        if o_int8 is not None and o_qs is not None:
            for col, batch in ((9, "b1"), (10, "b32")):
                mine_ms, qs_ms = _num(o_int8[col]) or 0.0, _num(o_qs[col]) or 0.0
                parts.append(
                    f"onnxruntime int8 {batch} no slower than quantize_static: "
                    f"{yes(mine_ms <= qs_ms)} ({mine_ms:.3f} vs {qs_ms:.3f} ms)"
                )
        out.append(f"- targets, **{model}**: " + "; ".join(parts))
    return out


def _cells(line: str) -> list[str]:
    """The stripped cells of one markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def kept_rows(
    measured: dict[str, set[str]] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Rows of the table not measured now, and every baseline's note line.

    ``measured`` maps each baseline measured now to the runtimes of its new rows;
    a row is kept unless its baseline and runtime are both in it (all rows when
    None). Nothing is kept when the table's columns are not today's.
    """
    measured = measured or {}
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(r"<!-- begin:deploy -->(.*?)<!-- end:deploy -->", text, re.S)
    lines = (m.group(1) if m else "").splitlines()
    header = "| " + " | ".join(HEADERS) + " |"
    if header not in lines:
        return [], {}
    rows = []
    for ln in lines[2 + lines.index(header) :]:
        if not ln.startswith("| "):
            break
        cells = _cells(ln)
        if cells[1] not in measured.get(cells[0], ()):
            rows.append(ln)
    notes = {ln[4:].split("**")[0]: ln for ln in lines if ln.startswith("- **")}
    return rows, notes


def other_figures(note: str, runtimes: set[str]) -> tuple[list[str], str]:
    """The figures of a note line for the runtimes not in ``runtimes``, and how they were run.

    Figures are the ``"; "``-separated items after "Measured in ... min." that start
    with a runtime's name; the second value repeats the note's latency repetitions
    and duration, or is empty when no figure is kept.
    """
    figures = note.split(" min. ", 1)[1].split("; ") if " min. " in note else []
    kept = [f for f in figures if f.split(" ")[0] in set(RUNTIMES) - runtimes]
    how = re.search(r"median per image of (\d+) \(b1\) / (\d+) \(b32\) runs", note)
    took = re.search(r"Measured in ([\d.]+) min", note)
    if not kept or how is None or took is None:
        return kept, ""
    return kept, f"{how[1]} (b1) / {how[2]} (b32) runs, {took[1]} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (demo model only)")
    ap.add_argument("--model", action="append", default=[], help="only these baselines")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved batch-32 rounds")
    ap.add_argument(
        "--b1-runs",
        type=int,
        default=300,
        help=(
            "interleaved batch-1 rounds, each timed run after 3 untimed runs of the same "
            "file (cold runs right after other files left two files of one graph up to "
            "7 %% apart even at 300)"
        ),
    )
    ap.add_argument(
        "--target", action="append", choices=TARGETS, default=[], help="only these targets"
    )
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument(
        "--targets-only",
        action="store_true",
        help="measure nothing: rewrite the target lines from the table in RESULTS.md",
    )
    args = ap.parse_args()
    if args.targets_only:
        rows, notes = kept_rows()
        write_section(rows, list(notes.values()), args.no_write)
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    reps = (2, 1) if args.quick else (args.b1_runs, args.rounds)
    models, skipped = baselines(args.quick, args.model)
    t0 = time.time()
    rows: list[list[object]] = []
    notes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bname, (model, size) in models.items():
            r, n = bench_baseline(
                bname, model, size, Path(tmp), args.quick, reps, args.target or list(TARGETS)
            )
            rows += r
            notes[bname] = n
    elapsed = time.time() - t0
    measured = {b: {str(r[1]) for r in rows if r[0] == b} for b in models}
    old_rows, old_notes = kept_rows(measured)
    table = markdown_table(HEADERS, rows).splitlines()
    common = (
        f"{peers.cpu_flags()} Latency: median per image of {reps[0]} (b1) / {reps[1]} (b32) "
        "runs, every file of a runtime timed round by round in a fresh process that loads "
        "them (OpenVINO's in the benchmark's process), in a seeded random order, each "
        "timed run right after 3 untimed runs of the same file (its steady latency, as an "
        "app running one detector sees it), 1 thread: torch's, ExecuTorch's thread pool "
        "(XNNPACK's), ONNX Runtime and OpenVINO sessions. Peak RSS: VmHWM of a fresh "
        "process that imports only "
        "the runtime's own package (torch too for ExecuTorch's input tensor), loads the file "
        "and runs one image: what an app serving the file needs. Calibration: the same val "
        "images for every tool; QAT: "
        f"{QAT_EPOCHS} epoch of distillation from the float model (lr {QAT_LR:g}, "
        f"alpha {QAT_ALPHA:g}: distillation x alpha + label loss x (1 - alpha)); "
        f"s50: 1 epoch of distillation from the unpruned model (lr {PRUNE_LR:g}). "
        "Exports with no agreement floor (atol 1e3): the deployed AUC is what each file "
        "reaches. 'decisions = eager': the fraction of test images whose decision at 0.5 "
        "is the same from the file as from the eager model it was written from."
    )
    body = []
    for b, n in notes.items():
        again = measured[b]
        kept, how = other_figures(old_notes.pop(b, ""), again)
        when = f"Measured in {elapsed / 60:.1f} min"
        if kept:  # some of this baseline's rows come from the earlier run
            when += f" ({', '.join(sorted(again))} rows; the other rows from an earlier run"
            when += f": {how})" if how else ")"
        body.append(f"- **{b}**: {machine_line()} {common} {when}. " + "; ".join([*n, *kept]))
    body += [f"- skipped: {s}" for s in skipped]
    write_section(
        [*old_rows, *table[2:]], [*old_notes.values(), *body], args.no_write or args.quick
    )


def write_section(table_rows: list[str], notes: list[str], dry: bool) -> None:
    """Print the section (table, target lines, notes) and write it unless ``dry``."""
    cells = [_cells(ln) for ln in table_rows]
    first = {b: i for i, b in reversed(list(enumerate(c[0] for c in cells)))}
    rank = {r: i for i, r in enumerate(RUNTIMES)}
    order = sorted(
        range(len(cells)),
        key=lambda i: (first[cells[i][0]], rank.get(cells[i][1], len(RUNTIMES)), i),
    )
    cells = [cells[i] for i in order]
    table_rows = [table_rows[i] for i in order]
    head = markdown_table(HEADERS, []).splitlines()
    text = (
        "\n".join([*head, *table_rows]) + "\n\n" + "\n".join([*target_lines(cells), *sorted(notes)])
    )
    print(text)
    if not dry:
        update_section("deploy", "## Deployment: what ships, with the peers\n\n" + text)


if __name__ == "__main__":
    main()
