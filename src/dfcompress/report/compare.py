"""``compare``: evaluate compressed variants of a detector on the same data, into a Report.

Label 1 = fake. The score of a sample is ``P(fake)``: the sigmoid of a
one-logit head, or ``softmax[:, 1]`` of a two-logit head (the same number as
the sigmoid of ``logit[1] - logit[0]``), always computed in float32/float64 even
for float16 / bfloat16 models, whose inputs are cast to their dtype.

The data is read once and kept in memory, so every variant sees exactly the
same samples in the same order (a shuffling loader cannot reorder them between
variants), and the worst-mismatches table can pair each sample's scores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress._calibration import calibration_inputs, check_batch
from dfcompress._data import batch_input, batch_labels, input_dtype
from dfcompress._validate import (
    check_bool,
    check_int,
    check_model,
    check_number,
    check_tensor,
    refused_input,
    short,
)
from dfcompress.distributed.executor import Executor, resolve_executor
from dfcompress.distributed.shards import DatasetShards
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.gradcam import fake_logodds, grad_cam
from dfcompress.evaluate.measure import Measurement, measure
from dfcompress.evaluate.metrics import Metrics, summarize
from dfcompress.evaluate.video import Aggregation, video_key, video_scores
from dfcompress.report.report import Report
from dfcompress.report.result import CATEGORIES, CamPanel, Category, VariantResult

__all__ = ["collect", "compare", "score_batches"]

_CALIBRATION_SAMPLES = 256  # what a recipe step reads (compress's default max_samples)
_NAME_KEYS = ("name", "names", "path", "paths", "file", "filename")


def _names(batch: Any, n: int, start: int) -> list[str]:
    names: Any = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        names = batch[2]
    elif isinstance(batch, Mapping):
        names = next((batch[k] for k in _NAME_KEYS if k in batch), None)
    if isinstance(names, str):
        names = [names]
    if isinstance(names, (list, tuple)) and len(names) == n:
        return [str(v) for v in names]
    return [f"sample_{start + i:05d}" for i in range(n)]


def collect(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[torch.Tensor], npt.NDArray[np.int64], list[str]]:
    """Read the whole data once: input batches, labels and sample names.

    ``data`` yields ``(image, label)``, ``(image, label, name)`` batches or dicts
    (``image``/``label``/``name``); a pair of tensors ``(images, labels)`` is one batch.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = [data]
    batches: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    names: list[str] = []
    if isinstance(data, (str, bytes, Mapping, torch.Tensor)) or not isinstance(data, Iterable):
        raise DfcompressError(
            f"data={short(data)} is not labelled data: pass (images, labels) or an iterable of "
            "(image, label[, name]) batches or dicts"
        )
    for batch in data:
        x = batch_input(batch)
        check_batch(x, len(batches), batches[0] if batches else None, "data")
        y = batch_labels(batch).flatten().long()
        if y.shape[0] != x.shape[0]:
            raise DfcompressError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
        names += _names(batch, x.shape[0], len(names))
        batches.append(x.detach())
        labels.append(y)
    if not batches:
        raise DfcompressError("the data yielded no batches")
    return batches, _check_labels(torch.cat(labels).numpy()), names


def _check_labels(y: Any) -> npt.NDArray[np.int64]:
    y_all = np.asarray(y).astype(np.int64)
    if not np.isin(y_all, (0, 1)).all():
        raise DfcompressError(
            f"labels must be 0 (real) or 1 (fake); got {sorted(set(y_all.tolist()))[:5]}"
        )
    return y_all


def score_batches(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    bar: Any = None,
) -> npt.NDArray[np.float64]:
    """P(fake) of every sample, in float64 (inputs cast to ``dtype``, outputs to float)."""
    out: list[torch.Tensor] = []
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                with refused_input("data", x, model):
                    logits = model(x.to(dtype))
                if not isinstance(logits, torch.Tensor):
                    raise DfcompressError(
                        f"the model returned {type(logits).__name__}; compare needs logits"
                    )
                z = fake_logodds(logits.float()).double().flatten()
                out.append(torch.sigmoid(z))
                if bar is not None:
                    bar.update(1)
    finally:
        for m, was in flags.items():
            m.train(was)
    return torch.cat(out).numpy()


def _float32_copy(model: nn.Module) -> nn.Module:
    """A float32 copy for Grad-CAM of half-precision models (cast layers included)."""
    twin = copy.deepcopy(model).float()
    for m in twin.modules():
        if isinstance(getattr(m, "dtype", None), torch.dtype):
            setattr(m, "dtype", torch.float32)  # noqa: B010  (cast layers cast inputs to it)
            if hasattr(m, "dtype_name"):
                setattr(m, "dtype_name", "float32")  # noqa: B010
    return twin


def _pick(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], threshold: float, k: int
) -> dict[Category, list[int]]:
    ok = np.isfinite(scores)
    fake_called = scores > threshold
    groups: dict[Category, tuple[npt.NDArray[np.bool_], bool]] = {
        "resolved_fakes": ((labels == 1) & fake_called & ok, True),
        "missed_fakes": ((labels == 1) & ~fake_called & ok, False),
        "false_positives": ((labels == 0) & fake_called & ok, True),
        "true_negatives": ((labels == 0) & ~fake_called & ok, False),
    }
    out: dict[Category, list[int]] = {}
    for cat, (mask, highest) in groups.items():
        idx = np.flatnonzero(mask)
        order = np.argsort(-scores[idx] if highest else scores[idx], kind="mergesort")
        out[cat] = [int(i) for i in idx[order][:k]]
    return out


def _cams(
    model: nn.Module,
    inputs: torch.Tensor,
    picks: dict[Category, list[int]],
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    names: Sequence[str],
    dtype: torch.dtype,
    notes: list[str],
) -> dict[Category, list[CamPanel]]:
    chosen = [i for cat in CATEGORIES for i in picks[cat]]
    if not chosen:
        return {cat: [] for cat in CATEGORIES}
    x = inputs[chosen]
    target: nn.Module = model
    if dtype != torch.float32:
        target = _float32_copy(model)
        notes.append(f"Grad-CAM ran on a float32 copy of this {dtype} model")
    try:
        cam = grad_cam(target, x.float())
    except RuntimeError:
        cam = grad_cam(_float32_copy(model), x.float())
        notes.append("Grad-CAM ran on a float32 copy of this model")
    maps = cam.maps.detach().float().numpy()
    flat = cam.flat.numpy()
    out: dict[Category, list[CamPanel]] = {}
    j = 0
    for cat in CATEGORIES:
        panels = []
        for i in picks[cat]:
            panels.append(
                CamPanel(i, names[i], int(labels[i]), float(scores[i]), maps[j], bool(flat[j]))
            )
            j += 1
        out[cat] = panels
    return out


def _video(
    names: Sequence[str],
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    video: bool | Aggregation | None,
    threshold: float,
) -> tuple[Metrics | None, str | None]:
    if video is False:
        return None, None
    agg: Aggregation = video if isinstance(video, str) else "mean"
    keys = [video_key(n) for n in names]
    if video is None:
        per_class: dict[int, set[str]] = {0: set(), 1: set()}
        for k, y in zip(keys, labels, strict=True):
            per_class[int(y)].add(k)
        grouped = len(set(keys)) < len(keys)
        if not grouped or min(len(v) for v in per_class.values()) < 2:
            return None, None
    try:
        v = video_scores(names, labels, scores, agg=agg)
    except DfcompressError as e:
        if video is None:
            return None, f"video-level metrics skipped: {e}"
        raise
    return summarize(v.labels, v.scores, threshold=threshold), None


def _panel_images(
    inputs: torch.Tensor, results: Sequence[VariantResult]
) -> dict[int, npt.NDArray[np.float32]]:
    """``[H, W, 3]`` pictures in [0, 1] of the samples shown in Grad-CAM panels."""
    wanted = sorted({p.index for r in results for ps in r.cams.values() for p in ps})
    out: dict[int, npt.NDArray[np.float32]] = {}
    for i in wanted:
        x = inputs[i].detach().float()
        if x.dim() != 3:
            continue
        x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:  # normalized inputs: stretch for display
            x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        out[i] = x.permute(1, 2, 0).numpy().astype(np.float32)
    return out


def compare(
    variants: Mapping[str, nn.Module | str],
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    *,
    baseline: str = "baseline",
    tolerance: float = 0.01,
    threshold: float = 0.5,
    video: bool | Aggregation | None = None,
    gradcam: bool = True,
    progress: bool = True,
    example: torch.Tensor | None = None,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    measure_repeats: int = 10,
    top_k: int = 5,
    title: str = "Compression report",
    notes: Sequence[str] = (),
    executor: Executor = None,
) -> Report:
    """Evaluate every variant on the same data and gather the comparison in a :class:`Report`.

    Args:
        variants: ``{name: model}``; a value may also be a recipe string such as
            ``"q8-p50"``, applied to the baseline model with :func:`dfcompress.compress`.
        data: Yields ``(image, label)``, ``(image, label, name)`` batches or dicts;
            label 1 = fake. Read once and kept in memory.
        baseline: The name of the reference variant (a model, not a recipe).
        tolerance: Absolute AUC a variant may lose and still be "Stable".
        threshold: Decision threshold on P(fake) (fake iff score > threshold).
        video: None = video-level metrics when sample names group into videos of
            both classes; False = never; True or an aggregation (``"mean"``,
            ``"median"``, ``"max"``, ``"topk"``) = always.
        gradcam: Compute Grad-CAM maps of the top-``top_k`` samples of each
            outcome (resolved fakes, missed fakes, false positives, true negatives).
        progress: Show progress bars.
        example: Input batch for latency and memory (default: up to 8 samples of the data).
        calibration: Data for recipes that need it (default: the evaluation data).
        measure_repeats: Timed forwards per variant for the latency.
        top_k: Samples per Grad-CAM category and per variant in the mismatch table.
        title: The report's title.
        notes: Lines for the report header (data set, resolution, subsets, ...).
        executor: Where the variants are scored: ``None`` (this process),
            ``"ray"`` or a :class:`~dfcompress.distributed.RayExecutor` (one
            task per variant and data shard; the same scores). With a
            :class:`~dfcompress.distributed.DatasetShards` as ``data`` the
            workers read the data themselves. See :doc:`/scaleout`.

    Returns:
        A :class:`Report`; ``report.save(folder)`` writes markdown, HTML, JSON and PNGs.

    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 1))
    >>> x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 2
    >>> rep = compare({"baseline": net, "q16": "q16"}, (x, y), progress=False, gradcam=False)
    >>> [r.name for r in rep.summary()], rep.summary()[1].status in ("Stable", "Degraded")
    (['baseline', 'q16'], True)
    """
    from tqdm.auto import tqdm

    from dfcompress.recipe import compress

    if not isinstance(variants, Mapping) or not variants:
        raise DfcompressError(
            f"variants={short(variants)} must be a non-empty mapping: give "
            "{'baseline': model, 'q8': ...}"
        )
    for flag, value in (("gradcam", gradcam), ("progress", progress)):
        check_bool(value, flag)
    check_int(measure_repeats, "measure_repeats", low=1)
    check_int(top_k, "top_k", low=1)
    check_number(threshold, "threshold")
    check_number(tolerance, "tolerance")
    if example is not None:
        check_tensor(example, "example", finite=False)
    for name, v in variants.items():
        if isinstance(v, nn.Module):
            check_model(v, f"variants[{name!r}]")
    if baseline not in variants:
        raise DfcompressError(
            f"baseline={baseline!r} is not among the variants {list(variants)}: "
            "name the reference model with baseline="
        )
    base_model = variants[baseline]
    if not isinstance(base_model, nn.Module):
        raise DfcompressError(
            f"the baseline {baseline!r} must be a model, got {type(base_model).__name__}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise DfcompressError(f"threshold={threshold} is out of range: use 0..1 (P(fake))")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise DfcompressError(f"tolerance={tolerance} is invalid: use a finite value >= 0")
    ray_ex = resolve_executor(executor)
    inputs: Any
    if ray_ex is not None and isinstance(data, DatasetShards):
        from dfcompress.distributed._evaluate import LazyInputs

        batches: list[torch.Tensor] | None = None
        source: list[torch.Tensor] | DatasetShards = data
        inputs = LazyInputs(data)
        first = inputs[: min(8, len(data))]
    else:
        batches, labels, names = collect(data)
        source = batches
        inputs = torch.cat(batches)
        first = inputs[: min(8, inputs.shape[0])]
    # read once: a generator serves every recipe variant
    calibration = calibration_inputs(calibration, limit=_CALIBRATION_SAMPLES)
    models: dict[str, tuple[nn.Module, str | None]] = {}
    header = list(notes)
    for name, v in variants.items():
        if isinstance(v, str):
            calib = calibration if calibration is not None else (batches or data)
            if calibration is None:
                msg = "recipes were calibrated on the evaluation data"
                if msg not in header:
                    header.append(msg)
            models[name] = (compress(base_model, v, calib, progress=progress), v)
        elif isinstance(v, nn.Module):
            history = getattr(v, "dfc_history", [])
            recipe = (
                history[-1].get("recipe") if history and isinstance(history[-1], dict) else None
            )
            models[name] = (v, recipe)
        else:
            raise DfcompressError(
                f"variant {name!r} is a {type(v).__name__}: give an nn.Module or a recipe string"
            )
    ex = example if example is not None else first
    dtypes = {name: input_dtype(model, first) for name, (model, _) in models.items()}
    remote: dict[str, npt.NDArray[np.float64]] = {}
    if ray_ex is not None:
        from dfcompress.distributed._evaluate import score_on_ray

        todo = {name: (model, dtypes[name]) for name, (model, _) in models.items()}
        remote, got_labels, got_names = score_on_ray(ray_ex, todo, source, first, progress=progress)
        if batches is None:
            labels, names = _check_labels(got_labels), got_names or []

    results: list[VariantResult] = []
    total = len(models) * len(batches) if batches is not None and not remote else 0
    bar = tqdm(total=total, desc="evaluate", disable=not progress or not total)
    try:
        for name, (model, recipe) in models.items():
            dtype = dtypes[name]
            if name in remote:
                scores = remote[name]
            else:
                scores = score_batches(model, batches or [], dtype=dtype, bar=bar)
            metrics = summarize(labels, scores, threshold=threshold)
            m: Measurement = measure(model, ex.to(dtype), repeats=measure_repeats, warmup=2)
            vnotes = list(metrics.notes)
            vid, why = _video(names, labels, scores, video, threshold)
            if why:
                vnotes.append(why)
            result = VariantResult(
                name=name,
                recipe=recipe,
                scores=scores,
                metrics=metrics,
                size_bytes=m.serialized_bytes,
                measurement=m,
                video=vid,
                notes=vnotes,
                input_dtype=str(dtype).removeprefix("torch."),
            )
            if gradcam:
                picks = _pick(labels, scores, threshold, top_k)
                result.cams = _cams(model, inputs, picks, labels, scores, names, dtype, vnotes)
            results.append(result)
    finally:
        bar.close()
    return Report(
        title=title,
        variants=results,
        labels=labels,
        names=names,
        baseline=baseline,
        tolerance=tolerance,
        threshold=threshold,
        notes=header,
        images=_panel_images(inputs, results),
        top_k=top_k,
    )
