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

import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._data import input_dtype
from dfcompress._validate import (
    check_bool,
    check_int,
    check_model,
    check_number,
    check_tensor,
    short,
)
from dfcompress.distributed.executor import Executor, resolve_executor
from dfcompress.distributed.shards import DatasetShards
from dfcompress.errors import DfcompressError
from dfcompress.evaluate.measure import Measurement, measure
from dfcompress.evaluate.metrics import summarize
from dfcompress.evaluate.params import logical_params
from dfcompress.evaluate.video import Aggregation
from dfcompress.report._model import describe_changes, model_info
from dfcompress.report._panels import cams, panel_images, pick
from dfcompress.report._scoring import check_labels, collect, score_batches, video_metrics
from dfcompress.report.report import Report
from dfcompress.report.result import VariantResult

__all__ = ["collect", "compare", "score_batches"]

_CALIBRATION_SAMPLES = 256  # what a recipe step reads (compress's default max_samples)


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
    deployed: bool = False,
    target: str | Mapping[str, str] | None = None,
    deploy_batch: int = 32,
    export_options: Mapping[str, Any] | None = None,
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
        deployed: Evaluate what ships: export every variant with
            :func:`dfcompress.export` to a temporary folder and score the file in its
            runtime; each row then has the file's AUC and confusion table, its bytes,
            its latency per image at batch 1 and ``deploy_batch`` in the runtime, the
            peak memory of a fresh process that loads it and runs one image, the
            export's agreement figures, and the eager model's AUC beside them.
            Grad-CAM panels stay those of the eager model.
        target: The runtime of variants that were not quantized for one (a model
            quantized with ``quantize(..., target=...)`` goes to its own); one name, or
            ``{variant: target}`` for some variants. Default: the
            target the quantized variants name, else ``"xnnpack"``.
        deploy_batch: The large batch of the deployed latency.
        export_options: Passed to :func:`dfcompress.export` (``atol``, ``rtol``,
            ``min_agreement``, ``check``, target options).

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
    check_bool(deployed, "deployed")
    check_int(deploy_batch, "deploy_batch", low=1)
    if export_options is not None and not isinstance(export_options, Mapping):
        raise DfcompressError(
            f"export_options={short(export_options)} must be a mapping of export() options"
        )
    ray_ex = resolve_executor(executor)
    if deployed and ray_ex is not None and isinstance(data, DatasetShards):
        raise DfcompressError(
            "deployed=True runs the exported files here on data held in memory: pass the "
            "data itself (not DatasetShards), or deployed=False"
        )
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
            labels, names = check_labels(got_labels), got_names or []

    with tempfile.TemporaryDirectory(prefix="dfc-deployed-") as tmp:
        shipped: dict[str, Any] = {}
        if deployed:
            from dfcompress.report._deployed import evaluate_deployed

            shipped = evaluate_deployed(
                {k: mv for k, (mv, _) in models.items()},
                batches or [],
                dtypes,
                ex,
                Path(tmp),
                target=target,
                batch_n=deploy_batch,
                repeats=measure_repeats,
                options=export_options or {},
            )
        results: list[VariantResult] = []
        total = len(models) * len(batches) if batches is not None and not remote else 0
        bar = tqdm(total=total, desc="evaluate", disable=not progress or not total)
        try:
            for name, (model, recipe) in models.items():
                results.append(
                    _variant(
                        name,
                        model,
                        recipe,
                        remote.get(name),
                        shipped.get(name),
                        batches,
                        labels,
                        names,
                        inputs,
                        ex,
                        dtypes[name],
                        threshold=threshold,
                        video=video,
                        gradcam=gradcam,
                        top_k=top_k,
                        repeats=measure_repeats,
                        bar=bar,
                    )
                )
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
        images=panel_images(inputs, results),
        top_k=top_k,
        model=model_info(base_model, tuple(first.shape[1:])),
    )


def _variant(
    name: str,
    model: nn.Module,
    recipe: str | None,
    remote: npt.NDArray[np.float64] | None,
    shipped: Any,
    batches: Sequence[torch.Tensor] | None,
    labels: npt.NDArray[np.int64],
    names: Sequence[str],
    inputs: Any,
    ex: torch.Tensor,
    dtype: torch.dtype,
    *,
    threshold: float,
    video: bool | Aggregation | None,
    gradcam: bool,
    top_k: int,
    repeats: int,
    bar: Any,
) -> VariantResult:
    """Score, measure and explain one variant (its shipped file's scores when deployed)."""
    eager = (
        remote if remote is not None else score_batches(model, batches or [], dtype=dtype, bar=bar)
    )
    eager_metrics = summarize(labels, eager, threshold=threshold)
    scores, metrics = eager, eager_metrics
    # deployed: the eager latency is not what ships; the fresh-process RSS replaces the peak
    m: Measurement = measure(
        model,
        ex.to(dtype),
        repeats=1 if shipped else repeats,
        warmup=0 if shipped else 2,
        memory=shipped is None,
    )
    figures = None
    size = m.serialized_bytes
    if shipped is not None:
        scores = shipped.scores
        metrics = summarize(labels, scores, threshold=threshold)
        figures = shipped.figures.with_eager(eager_metrics)
        size = figures.cost.size_bytes
    vnotes = list(metrics.notes)
    vid, why = video_metrics(names, labels, scores, video, threshold)
    if why:
        vnotes.append(why)
    result = VariantResult(
        name=name,
        recipe=recipe,
        scores=scores,
        metrics=metrics,
        size_bytes=size,
        measurement=m,
        video=vid,
        notes=vnotes,
        input_dtype=str(dtype).removeprefix("torch."),
        deployed=figures,
        params=logical_params(model),
        changes=describe_changes(model),
    )
    if gradcam:
        picks = pick(labels, scores, threshold, top_k)
        if shipped is not None:
            vnotes.append("Grad-CAM maps are the eager model's, at the samples its file scored")
        result.cams = cams(model, inputs, picks, labels, scores, names, dtype, vnotes)
    return result
