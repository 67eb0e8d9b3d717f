"""The sensitivity scan on Ray: one task per (group of layers, amount).

Each task rebuilds the model from its dfcompress file, computes the part of
the network upstream of its layers once (as the local scan does) and scores
its layers at its amount. With ``stop_below`` a layer's amounts depend on its
earlier scores, so a task then takes a group of layers over the whole grid.
The scores are those of the local scan; ``forward_passes`` and
``full_pass_equivalent`` count what the tasks ran (each task pays its own
reference pass and upstream part).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dfcompress.distributed._transfer import ModelBlob, function_ref, load_blob, pack_model
from dfcompress.distributed.executor import RayExecutor, connect, run_units, workers
from dfcompress.errors import DfcompressError

if TYPE_CHECKING:
    from dfcompress.prune.sensitivity import SensitivityResult

__all__ = ["scan_on_ray"]


def _scan_unit(
    blob: ModelBlob,
    x: Any,
    metric: str | None,
    names: list[str],
    amounts: list[float],
    stop_below: float | None,
    threads: int,
) -> dict[str, Any]:
    """In a worker: each layer of ``names`` pruned alone at each of ``amounts``."""
    from dfcompress._imports import import_attr
    from dfcompress.prune._suffix import SuffixRunner
    from dfcompress.prune.sensitivity import (
        cosine_agreement,
        layer_curve,
        output_tensors,
        score_outputs,
    )

    torch.set_num_threads(threads)
    score_fn = cosine_agreement if metric is None else import_attr(metric, "the scan metric")
    # a copy: the scan writes into weights (and restores them) and the cache is shared
    work = copy.deepcopy(load_blob(blob)).eval()
    layers = dict(work.named_modules())
    with torch.no_grad():
        run = SuffixRunner(work, torch.from_numpy(np.array(x)))
        reference = output_tensors(run.reference())
        baseline = score_outputs(score_fn, reference, reference)
        scores: dict[str, list[float]] = {}
        for name, forward in run.walk(list(names)):
            weight = layers[name].weight
            if not isinstance(weight, torch.Tensor):  # pragma: no cover - prunable layers only
                raise DfcompressError(f"layer {name!r} has no weight tensor")
            scores[name] = layer_curve(weight, forward, reference, score_fn, amounts, stop_below)
    return {"baseline": baseline, "scores": scores, "calls": run.calls, "cost": run.cost}


def scan_on_ray(
    ex: RayExecutor,
    work: nn.Module,
    x: torch.Tensor,
    metric: Any,
    names: Sequence[str],
    grid: tuple[float, ...],
    stop_below: float | None,
    progress: bool,
) -> SensitivityResult:
    """The :class:`~dfcompress.prune.SensitivityResult` of scanning ``names`` on Ray."""
    from tqdm.auto import tqdm

    from dfcompress.prune.sensitivity import SensitivityResult, curve_of

    metric_ref = None if metric is None else function_ref(metric, "metric")
    ray = connect(ex)
    blob = ray.put(pack_model(work, "the scanned model", x[:2]))
    x_ref = ray.put(x.detach().cpu().contiguous().numpy())
    n_workers = workers(ray, ex)
    steps: list[list[float]] = [list(grid)] if stop_below is not None else [[a] for a in grid]
    # enough groups that every worker has units, few enough that each group's
    # upstream pass is shared by several layers
    n_groups = min(len(names), max(1, math.ceil(n_workers / len(steps))))
    size = math.ceil(len(names) / n_groups)
    groups = [list(names[i : i + size]) for i in range(0, len(names), size)]
    units = [(blob, x_ref, metric_ref, g, a, stop_below, ex.threads) for g in groups for a in steps]

    def describe(i: int) -> str:
        g, a = groups[i // len(steps)], steps[i % len(steps)]
        amount = f"amount {a[0]:g}" if len(a) == 1 else "the amounts"
        return f"scanning layers {g[0]!r}..{g[-1]!r} at {amount}"

    bar = tqdm(total=len(units), desc="sensitivity (ray)", disable=not progress)
    try:
        out = run_units(ray, ex, _scan_unit, units, describe, bar=bar)
    finally:
        bar.close()
    baseline = float(out[0]["baseline"])
    measured: dict[str, list[float]] = {n: [] for n in names}
    for r in out:  # units are in (group, amount) order: each layer's scores in grid order
        for name, s in r["scores"].items():
            measured[name] += s
    modules = dict(work.named_modules())
    layers = tuple(
        curve_of(n, int(modules[n].weight.numel()), baseline, grid, measured[n]) for n in names
    )
    return SensitivityResult(
        layers,
        baseline,
        None,
        "none",
        sum(int(r["calls"]) for r in out),
        full_pass_equivalent=sum(float(r["cost"]) for r in out),
    )
