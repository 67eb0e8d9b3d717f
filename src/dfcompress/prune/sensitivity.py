"""Sensitivity analysis: how much each layer can be pruned, and amounts meeting a target.

The scan prunes one layer at a time (L1, local) at each amount of a grid and
scores the **whole network's output** on one calibration batch, so a layer
inside a residual block is judged by what its pruning does to the detector's
output, not by its own output (a skip connection can make a layer look free
when judged alone). The default score needs no labels: the agreement of the
pruned model's outputs with the unpruned model's (:func:`cosine_agreement`).
Every output counts: a model returning several tensors (class logits and box
regression, in a tuple, list or dict) is scored on each, and its score is the
worst of them, so a small head cannot be pruned away behind a large one.

Cost: one forward pass of the calibration batch per (layer, amount), under
``torch.no_grad``, and most of each pass is not recomputed: the model is
traced with ``torch.fx`` (untraceable submodules kept whole), everything
upstream of the pruned layer is computed once and kept, and only the nodes from
the layer on are re-run. The scores are exactly those of full forwards; when
the model cannot be traced every pass is a full forward. ``forward_passes``
counts the passes and ``full_pass_equivalent`` their cost in full forwards.
With ``stop_below``, a layer's larger amounts are not scanned once its score
falls below that value (the allocation then never gives it more than the last
amount measured). By default (``quick=True``) BatchNorm is folded into the
scanned convs for the passes, and a layer that is clearly free (no change at
the largest amount: one pass) or clearly harmful (its score halved: the
amounts from there to the largest interpolated) is cut short; the allocation
is that of the full scan (see ``_curve.py``).

A layer whose pruning at the largest amount changes the score by less than
``1e-6`` is flagged ``"no effect"`` and named in a warning: it is usually not
on the forward path for these inputs (an unused branch, a layer the
calibration data never exercises). Its curve is used as measured.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dfcompress._validate import check_model
from dfcompress.distributed.executor import Executor, resolve_executor
from dfcompress.errors import DfcompressError, require
from dfcompress.prune._allocate import allocate_budget, allocate_threshold, monotone_losses
from dfcompress.prune._calib import calibration_batch
from dfcompress.prune._curve import NO_EFFECT, fold_for_scan, quick_curve
from dfcompress.prune._curve import layer_curve as layer_curve
from dfcompress.prune._scores import Metric as Metric
from dfcompress.prune._scores import cosine_agreement as cosine_agreement
from dfcompress.prune._scores import output_tensors as output_tensors
from dfcompress.prune._scores import score_outputs as score_outputs
from dfcompress.prune._scores import sign_agreement as sign_agreement
from dfcompress.prune._suffix import SuffixRunner
from dfcompress.prune._targets import Select, check_amount, prunable_layers

__all__ = [
    "LayerSensitivity",
    "Metric",
    "SensitivityResult",
    "Strategy",
    "allocate",
    "cosine_agreement",
    "output_tensors",
    "scan",
    "score_outputs",
    "sign_agreement",
]

Strategy = Literal["budget", "threshold"]
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's curve: the score after pruning it alone at each amount."""

    name: str
    params: int
    amounts: tuple[float, ...]
    scores: tuple[float, ...]
    chosen: float = 0.0
    flag: str = ""
    estimated: tuple[float, ...] = ()
    """Amounts whose score was interpolated, not measured (a clearly harmful or
    clearly free layer in a quick scan)."""


@dataclass(frozen=True)
class SensitivityResult:
    """The outcome of :func:`scan` (and :func:`allocate`): per-layer curves and amounts.

    Attributes:
        layers: One :class:`LayerSensitivity` per scanned layer, in model order.
        baseline: The metric of the unpruned model on the calibration batch.
        target: The parameter-weighted target the amounts were allocated for.
        strategy: How amounts were chosen (``"budget"``, ``"threshold"`` or ``"none"``).
        forward_passes: Forward passes made by the scan (full or partial).
        seconds: Wall time of the scan.
        full_pass_equivalent: The cost of those passes in full forwards (the
            share of the graph each one re-ran, summed).
    """

    layers: tuple[LayerSensitivity, ...]
    baseline: float
    target: float | None = None
    strategy: str = "none"
    forward_passes: int = 0
    seconds: float = 0.0
    full_pass_equivalent: float = 0.0

    @property
    def amounts(self) -> dict[str, float]:
        """The chosen amount of each layer (feed it to ``l1_unstructured(..., scope="local")``)."""
        return {ly.name: ly.chosen for ly in self.layers}

    @property
    def achieved(self) -> float:
        """The parameter-weighted mean of the chosen amounts."""
        total = sum(ly.params for ly in self.layers)
        return sum(ly.params * ly.chosen for ly in self.layers) / total if total else 0.0

    @property
    def flagged(self) -> list[str]:
        """Layers whose pruning changed nothing measurable."""
        return [ly.name for ly in self.layers if ly.flag]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer: name, params, chosen amount, flag, and the score at each amount."""
        out = []
        grid = max((ly.amounts for ly in self.layers), key=len, default=())
        for ly in self.layers:
            row: dict[str, Any] = {"layer": ly.name, "params": ly.params, "chosen": ly.chosen}
            measured = dict(zip(ly.amounts, ly.scores, strict=False))
            row.update({f"score@{a:g}": measured.get(a, "") for a in grid})
            row["flag"] = ly.flag
            out.append(row)
        return out

    def to_markdown(self) -> str:
        """The per-layer table as GitHub-flavoured markdown."""
        rows = self.rows
        if not rows:
            return "(no layer scanned)"
        heads = list(rows[0])
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        for r in rows:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"baseline score {self.baseline:.4f}; strategy {self.strategy}; target "
            f"{self.target}; achieved {self.achieved:.4f}; {self.forward_passes} forward "
            f"passes ({self.full_pass_equivalent:.1f} full-pass equivalents) in "
            f"{self.seconds:.1f} s"
        )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Save the curves (score vs amount) and the chosen amounts as a PNG."""
        require("matplotlib", "report")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for ly in self.layers:
            ax1.plot((0.0, *ly.amounts), (self.baseline, *ly.scores), lw=1, alpha=0.7)
        ax1.set_xlabel("amount pruned (one layer alone)")
        ax1.set_ylabel("score")
        ax1.set_title("sensitivity of each layer")
        names = [ly.name for ly in self.layers]
        ax2.bar(range(len(names)), [ly.chosen for ly in self.layers])
        ax2.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax2.set_ylabel("chosen amount")
        ax2.set_title(f"allocation ({self.strategy}, achieved {self.achieved:.3f})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def scan(
    model: nn.Module,
    *,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    metric: Metric | None = None,
    amounts: Sequence[float] = DEFAULT_GRID,
    select: Select | None = None,
    n_samples: int = 32,
    example_inputs: torch.Tensor | None = None,
    stop_below: float | None = None,
    progress: bool = True,
    executor: Executor = None,
    quick: bool = True,
) -> SensitivityResult:
    """Prune each layer alone at each amount and score the network's output.

    Args:
        model: The model to analyse (not modified; a copy in eval mode is scanned).
        calibration: A loader or tensor; the first ``n_samples`` inputs form one
            batch. ``None`` synthesizes inputs from the model (data-free).
        metric: ``metric(output, reference) -> float``, higher is better; the
            default is :func:`cosine_agreement` with the unpruned model.
        amounts: The grid of amounts, increasing, in (0, 1).
        select: Which layers to scan (default: every non-binary conv/linear).
        n_samples: Size of the calibration batch.
        example_inputs: Gives the input shape when synthesizing data.
        stop_below: Stop raising a layer's amount once its score is below this
            (the larger amounts are then not measured, and :func:`allocate`
            never gives the layer more than its last measured amount).
        progress: Show a progress bar.
        executor: ``None`` (this process), ``"ray"`` or a
            :class:`~dfcompress.distributed.RayExecutor`: one task per (group
            of layers, amount), the same scores (see :doc:`/scaleout`). A
            custom ``metric`` must then be a module-level function.
        quick: Fold BatchNorm into the scanned convs for the passes, and stop
            early on layers that are clearly free or clearly harmful (their
            other amounts are estimated: see :attr:`LayerSensitivity.estimated`);
            the allocation is the one of the full scan. ``False`` measures every
            (layer, amount) on the model as it is, as Ray always does.

    Returns:
        A :class:`SensitivityResult` with no amounts chosen yet (see :func:`allocate`).

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> res = scan(net, calibration=torch.randn(16, 8), amounts=(0.5, 0.9), progress=False)
    >>> [ly.name for ly in res.layers], res.forward_passes  # reference + 2 layers x 2 amounts
    (['0', '2'], 5)
    """
    check_model(model)
    grid = tuple(check_amount(a, "amounts[i]") for a in amounts)
    if not grid or any(a <= 0 for a in grid) or list(grid) != sorted(set(grid)):
        raise DfcompressError(f"amounts={amounts!r} must be increasing fractions in (0, 1)")
    score_fn = metric if metric is not None else cosine_agreement
    start = time.perf_counter()
    work = copy.deepcopy(model).eval()
    x = calibration_batch(work, calibration, n_samples=n_samples, example_inputs=example_inputs)
    ray_ex = resolve_executor(executor)
    if ray_ex is not None:
        from dfcompress.distributed._scan import scan_on_ray

        names = list(prunable_layers(work, select))
        if not names:
            raise DfcompressError(f"no prunable conv/linear layer matched select={select!r}")
        result = scan_on_ray(ray_ex, work, x, metric, names, grid, stop_below, progress)
    else:
        with torch.no_grad():
            result = _scan(work, x, score_fn, grid, select, stop_below, progress, quick)
    result = replace(result, seconds=time.perf_counter() - start)
    if result.flagged:
        warnings.warn(
            f"pruning these layers by {grid[-1]} changed the model's output by nothing "
            f"measurable on the calibration batch: {', '.join(result.flagged)}; they may be "
            "off the forward path or unexercised by the data",
            stacklevel=2,
        )
    return result


def _scan(
    work: nn.Module,
    x: torch.Tensor,
    score_fn: Metric,
    grid: tuple[float, ...],
    select: Select | None,
    stop_below: float | None,
    progress: bool,
    quick: bool = False,
) -> SensitivityResult:
    layers = prunable_layers(work, select)
    if not layers:
        raise DfcompressError(f"no prunable conv/linear layer matched select={select!r}")
    order_by: dict[str, torch.Tensor] = {}
    if quick:
        order_by = {
            n: w.detach().clone()
            for n, m in layers.items()
            if isinstance(w := m.weight, torch.Tensor)
        }
        fold_for_scan(work, set(layers))
    run = SuffixRunner(work, x)
    reference = output_tensors(run.reference())
    if any(r.is_floating_point() and not bool(torch.isfinite(r).all()) for r in reference):
        raise DfcompressError(
            "the model's output on the calibration batch holds NaN or Inf: layers cannot be "
            "scored against it (check the model and the calibration data)"
        )
    baseline = score_outputs(score_fn, reference, reference)
    from tqdm.auto import tqdm

    found: dict[str, LayerSensitivity] = {}
    bar = tqdm(total=len(layers), desc="sensitivity", disable=not progress)
    for name, forward in run.walk(list(layers)):
        weight = layers[name].weight
        if not isinstance(weight, torch.Tensor):  # pragma: no cover - excluded by prunable_layers
            continue
        if quick:
            scores, estimated = quick_curve(
                weight,
                forward,
                reference,
                score_fn,
                grid,
                stop_below,
                baseline=baseline,
                order_by=order_by[name],
            )
        else:
            scores, estimated = (
                layer_curve(weight, forward, reference, score_fn, grid, stop_below),
                (),
            )
        found[name] = curve_of(name, weight.numel(), baseline, grid, scores, estimated)
        bar.update(1)
    bar.close()
    return SensitivityResult(
        tuple(found[n] for n in layers),
        baseline,
        None,
        "none",
        run.calls,
        full_pass_equivalent=run.cost,
    )


def curve_of(
    name: str,
    params: int,
    baseline: float,
    grid: Sequence[float],
    scores: Sequence[float],
    estimated: tuple[float, ...] = (),
) -> LayerSensitivity:
    """A layer's :class:`LayerSensitivity` from its scores (flagged if flat)."""
    flag = "no effect" if abs(baseline - scores[-1]) < NO_EFFECT else ""
    amounts = tuple(grid[: len(scores)])
    return LayerSensitivity(name, params, amounts, tuple(scores), 0.0, flag, estimated)


def allocate(
    result: SensitivityResult,
    target: float,
    *,
    strategy: Strategy = "budget",
    base: float = 0.2,
    threshold: float = 0.99,
) -> SensitivityResult:
    """Choose per-layer amounts from a scan.

    Args:
        result: A :func:`scan` result.
        target: The parameter-weighted fraction to prune over the scanned layers.
        strategy: ``"budget"`` meets ``target`` exactly (to one weight) with the
            least summed score drop (greedy over the curves, see
            ``allocate_budget``); ``"threshold"`` is the rule of the BNext
            study: every layer gets ``base``, raised to the largest amount whose
            score stays >= ``threshold`` (``target`` is then not enforced; see
            :attr:`SensitivityResult.achieved`).
        base: The floor amount of the threshold strategy.
        threshold: The score a layer must keep under the threshold strategy.

    Returns:
        A copy of ``result`` with ``chosen`` amounts filled in.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> res = scan(net, calibration=torch.randn(16, 8), progress=False)
    >>> round(allocate(res, 0.5).achieved, 4)
    0.5
    """
    target = check_amount(target, "target")
    if not result.layers:
        raise DfcompressError("the sensitivity result has no layer to allocate")
    grid = max((ly.amounts for ly in result.layers), key=len)
    if strategy == "budget":
        losses = [monotone_losses(result.baseline, ly.scores) for ly in result.layers]
        chosen = allocate_budget([ly.params for ly in result.layers], grid, losses, target)
    elif strategy == "threshold":
        check_amount(base, "base")
        chosen = allocate_threshold(grid, [ly.scores for ly in result.layers], base, threshold)
    else:
        raise DfcompressError(f"strategy={strategy!r} is not known: use 'budget' or 'threshold'")
    layers = tuple(replace(ly, chosen=c) for ly, c in zip(result.layers, chosen, strict=False))
    return replace(result, layers=layers, target=target, strategy=strategy)
