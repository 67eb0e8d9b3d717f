"""The ``prune`` verb."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from dfcompress._modes import eval_mode
from dfcompress.distributed.executor import Executor
from dfcompress.prune._calib import calibration_batch
from dfcompress.prune._targets import AmountSpec, Select
from dfcompress.prune.pruner import Method, PruneConfig, Pruner
from dfcompress.prune.schedule import Finetune, Schedule
from dfcompress.prune.sensitivity import Metric, Strategy
from dfcompress.prune.unstructured import Scope
from dfcompress.select import SelectorLike

__all__ = ["prune"]

_log = logging.getLogger("dfcompress")


def held_out_score(
    reference: nn.Module, model: nn.Module, x: torch.Tensor, metric: Metric | None = None
) -> float:
    """The worst score over every output of ``model`` against ``reference`` on ``x``.

    Each output (tensors of a tuple, list or dict, or ``.logits``) is scored on
    its own, so a small head next to a large one counts as much as it does.
    """
    from dfcompress.prune.sensitivity import cosine_agreement, output_tensors, score_outputs

    score = metric if metric is not None else cosine_agreement
    with torch.no_grad(), eval_mode(reference), eval_mode(model):
        refs, outs = output_tensors(reference(x)), output_tensors(model(x))
    return score_outputs(score, outs, refs)


def _better_of_sensitivity_and_global(
    model: nn.Module,
    config: PruneConfig,
    calibration: Iterable[Any] | torch.Tensor | None,
    metric: Metric | None,
    example_inputs: torch.Tensor | None,
    inplace: bool,
    progress: bool,
    post: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """Sensitivity allocation, or plain global L1 when that agrees better on held-out data.

    ``post`` (reconstruction) is applied to both before they are compared.
    """
    kw: dict[str, Any] = {"metric": metric, "example_inputs": example_inputs, "progress": progress}
    allocated = Pruner(config).apply(model, calibration=calibration, inplace=False, **kw)
    plain_cfg = replace(config, sensitivity=False, scope="global")
    plain = Pruner(plain_cfg).apply(model, calibration=calibration, inplace=False, **kw)
    if post is not None:
        allocated, plain = post(allocated), post(plain)
    n = config.n_samples
    batch = calibration_batch(model, calibration, n_samples=2 * n, example_inputs=example_inputs)
    # The scan scored the first n samples; judge on the others when there are any.
    x = batch[n:] if batch.shape[0] > n else batch
    s_alloc = held_out_score(model, allocated, x, metric)
    s_plain = held_out_score(model, plain, x, metric)
    best, which = (
        (allocated, "sensitivity allocation") if s_alloc >= s_plain else (plain, "global L1")
    )
    _log.info(
        "dfcompress: pruning kept the %s (held-out agreement %.4f for the sensitivity "
        "allocation, %.4f for global L1 at the same amount, on %d samples)",
        which,
        s_alloc,
        s_plain,
        x.shape[0],
    )
    if not inplace:
        return best
    model.load_state_dict(best.state_dict())
    return model


#: Calibration samples reconstruction uses at most.
RECONSTRUCT_SAMPLES = 128


def _reconstruction(
    model: nn.Module,
    method: str,
    steps: int,
    finetune: Finetune | None,
    calibration: Iterable[Any] | torch.Tensor | None,
    reconstruct: object,
    inplace: bool,
) -> tuple[Callable[[nn.Module], nn.Module], list[torch.Tensor]]:
    """The reconstruction step (``post``) and the calibration data, read once."""
    import copy

    from dfcompress._calibration import calibration_inputs
    from dfcompress._validate import check_bool, check_model
    from dfcompress.errors import DfcompressError
    from dfcompress.prune._reconstruct import reconstruct as run

    check_bool(reconstruct, "reconstruct")
    check_model(model)
    if method != "l1":
        raise DfcompressError(
            f"reconstruct=True applies to method='l1' (zeroed weights), not method={method!r}"
        )
    if steps != 1 or finetune is not None:
        raise DfcompressError(
            "reconstruct=True is for one-shot pruning: use steps=1 and no finetune "
            "(fine-tuning does the reconstruction's work)"
        )
    data = calibration_inputs(calibration, limit=RECONSTRUCT_SAMPLES)
    if data is None:
        raise DfcompressError(
            "reconstruct=True rebuilds each layer's output on real inputs: pass calibration= "
            "(a loader or a tensor of inputs)"
        )
    dense = copy.deepcopy(model) if inplace else model
    batches = [b for x in data for b in torch.split(x, 16)]

    def post(pruned: nn.Module) -> nn.Module:
        report = run(pruned, dense, batches)
        _log.info("dfcompress: reconstructed %d pruned layers", len(report))
        return pruned

    return post, data


def prune(
    model: nn.Module,
    amount: AmountSpec = 0.5,
    *,
    method: Method = "l1",
    scope: Scope = "global",
    sensitivity: bool = False,
    strategy: Strategy = "budget",
    calibration: Iterable[Any] | torch.Tensor | None = None,
    metric: Metric | None = None,
    steps: int = 1,
    schedule: Schedule | None = None,
    finetune: Finetune | None = None,
    select: Select | None = None,
    importance: Literal["l1", "l2", "taylor"] = "l1",
    ignore: SelectorLike | None = "head",
    recalibrate_bn: bool = False,
    inplace: bool = False,
    progress: bool = True,
    example_inputs: torch.Tensor | None = None,
    executor: Executor = None,
    reconstruct: bool = False,
) -> nn.Module:
    """Prune a model: unstructured L1 (optionally sensitivity-allocated) or structured channels.

    Args:
        model: The model; never modified unless ``inplace=True``.
        amount: Fraction in [0, 1) of weights (``"l1"``) or channels
            (``"structured"``) to remove, or ``{selector: fraction}`` such as
            ``{"conv": 0.2, "linear": 0.2}``.
        method: ``"l1"`` (zeroes weights; the saved file shrinks through sparse
            storage) or ``"structured"`` (removes channels; params, MACs and
            latency drop).
        scope: ``"global"`` (one magnitude threshold per group) or ``"local"``.
        sensitivity: Scan each layer's sensitivity and allocate per-layer
            amounts whose parameter-weighted mean is ``amount``. Works without
            data (inputs are synthesized from the model). For ``"l1"`` in one
            step, plain global L1 at the same amount is tried too and the one
            whose outputs (every output of the model) agree better with the
            unpruned model on held-out calibration samples is kept; the choice
            is logged on the ``"dfcompress"`` logger.
        strategy: Allocation rule: ``"budget"`` or ``"threshold"`` (base 0.2,
            raised while the score stays >= 0.99).
        calibration: Loader or tensor for the scan, Taylor importance and
            BatchNorm re-estimation.
        metric: ``metric(output, reference) -> float`` for the scan (default:
            cosine agreement with the unpruned model).
        steps: Prune in this many steps, following ``schedule``.
        schedule: ``(step, steps, target) -> amount`` (default linear).
        finetune: ``finetune(model, step)`` called after each step.
        select: Candidate layers (default: every non-binary conv/linear).
        importance: Channel importance for ``"structured"``.
        ignore: Layers ``"structured"`` keeps whole (default: the head).
        recalibrate_bn: Re-estimate BatchNorm statistics on ``calibration`` after each step.
        inplace: Modify ``model`` itself.
        progress: Show progress bars.
        example_inputs: A batch for tracing (structured) or the input shape (scan).
        executor: Where the sensitivity scan runs: ``None`` (this process),
            ``"ray"`` or a :class:`~dfcompress.distributed.RayExecutor` (same
            allocation; see :doc:`/scaleout`).
        reconstruct: After ``"l1"`` pruning in one step, reconstruct each pruned
            conv/linear layer on up to 128 ``calibration`` samples: as many
            weights per layer (and per block of 128 input columns) are pruned
            as magnitude pruning chose, but those whose removal changes the
            layer's output least, and the kept weights are updated to make up
            for them and for the layers before (SparseGPT-style; see
            :mod:`dfcompress.prune._reconstruct`). Needs ``calibration``.

    Returns:
        The pruned model.

    Raises:
        DfcompressError: For an amount outside [0, 1), an unknown method,
            scope, strategy or importance, or a graph that cannot be pruned.

    >>> import torch
    >>> from torch import nn
    >>> from dfcompress.prune import sparsity
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    >>> sparsity(prune(net, 0.5, progress=False))
    0.5
    >>> sparsity(prune(net, 0.5, sensitivity=True, progress=False))  # data-free
    0.5
    >>> prune(net, 0.5, method="structured", progress=False)[0].out_channels
    4
    """
    config = PruneConfig(
        amount=amount,
        method=method,
        scope=scope,
        sensitivity=sensitivity,
        strategy=strategy,
        steps=steps,
        schedule=schedule,
        select=select,
        importance=importance,
        ignore=ignore,
        recalibrate_bn=recalibrate_bn,
    )
    post: Callable[[nn.Module], nn.Module] | None = None
    if reconstruct is not False:
        post, calibration = _reconstruction(
            model, method, steps, finetune, calibration, reconstruct, inplace
        )
    if sensitivity and method == "l1" and steps == 1 and finetune is None:
        return _better_of_sensitivity_and_global(
            model, config, calibration, metric, example_inputs, inplace, progress, post
        )
    pruned = Pruner(config).apply(
        model,
        calibration=calibration,
        metric=metric,
        finetune=finetune,
        example_inputs=example_inputs,
        inplace=inplace,
        progress=progress,
        executor=executor,
    )
    return pruned if post is None else post(pruned)
