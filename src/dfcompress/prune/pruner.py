"""Pruner: one configured object over unstructured, sensitivity and structured pruning."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._validate import (
    check_bool,
    check_callable,
    check_int,
    check_model,
    check_number,
    check_tensor,
    has_layers,
    short,
    tied_layers,
)
from dfcompress.distributed.executor import Executor
from dfcompress.errors import DfcompressError
from dfcompress.prune._targets import AmountSpec, Select, check_amount
from dfcompress.prune.schedule import Finetune, Schedule, run_schedule
from dfcompress.prune.sensitivity import (
    DEFAULT_GRID,
    Metric,
    SensitivityResult,
    Strategy,
    allocate,
    scan,
)
from dfcompress.prune.unstructured import Scope, l1_unstructured, make_permanent
from dfcompress.select import SelectorLike

__all__ = ["Method", "PruneConfig", "Pruner"]

Method = Literal["l1", "structured"]
_METHODS = ("l1", "structured")
_BN_SAMPLES = 256  # samples BatchNorm re-estimation reads (schedule.reestimate_bn)


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how; validated on construction.

    Attributes:
        amount: Fraction in [0, 1) of weights (``"l1"``) or channels
            (``"structured"``), or ``{selector: fraction}``.
        method: ``"l1"`` (unstructured magnitude) or ``"structured"`` (channels).
        scope: ``"global"`` (one threshold per group) or ``"local"`` (per layer), for ``"l1"``.
        sensitivity: Allocate per-layer amounts from a sensitivity scan so that
            the parameter-weighted amount equals ``amount`` (``"l1"`` only).
        strategy: Allocation rule for ``sensitivity``: ``"budget"`` or ``"threshold"``.
        grid: Amounts each layer is scanned at.
        n_samples: Calibration samples of the scan (one batch).
        stop_below: Scan option: stop raising a layer's amount once its score
            falls below this (fewer passes; see :func:`~dfcompress.prune.scan`).
        steps: Number of pruning steps; ``finetune`` runs after each.
        schedule: ``(step, steps, target) -> amount`` (default linear).
        select: Candidate layers (default: every non-binary conv/linear).
        importance: Channel importance for ``"structured"``: ``"l1"``, ``"l2"``, ``"taylor"``.
        ignore: Layers structured pruning keeps whole (default: the head).
        recalibrate_bn: Re-estimate BatchNorm statistics on the calibration data after each step.
        keep_masks: Leave masks and hooks on an ``"l1"`` result (for further
            masked training); call ``make_permanent`` afterwards.
    """

    amount: AmountSpec = 0.5
    method: Method = "l1"
    scope: Scope = "global"
    sensitivity: bool = False
    strategy: Strategy = "budget"
    grid: Sequence[float] = field(default=DEFAULT_GRID)
    n_samples: int = 32
    stop_below: float | None = None
    steps: int = 1
    schedule: Schedule | None = None
    select: Select | None = None
    importance: Literal["l1", "l2", "taylor"] = "l1"
    ignore: SelectorLike | None = "head"
    recalibrate_bn: bool = False
    keep_masks: bool = False

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise DfcompressError(f"method={self.method!r} is not known: use 'l1' or 'structured'")
        if self.scope not in ("global", "local"):
            raise DfcompressError(f"scope={self.scope!r} is not known: use 'global' or 'local'")
        if self.strategy not in ("budget", "threshold"):
            raise DfcompressError(
                f"strategy={self.strategy!r} is not known: use 'budget' or 'threshold'"
            )
        if self.importance not in ("l1", "l2", "taylor"):
            raise DfcompressError(
                f"importance={self.importance!r} is not known: use 'l1', 'l2' or 'taylor'"
            )
        if isinstance(self.amount, Mapping):
            if not self.amount:
                raise DfcompressError("amount={} is empty: give a fraction or {selector: fraction}")
            for k, v in self.amount.items():
                check_amount(v, f"amount[{k!r}]")
        else:
            check_amount(self.amount)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise DfcompressError(f"steps={self.steps!r} is invalid: use an integer >= 1")
        check_int(self.n_samples, "n_samples", low=1)
        if isinstance(self.grid, (str, bytes)) or not isinstance(self.grid, Sequence):
            raise DfcompressError(
                f"grid={self.grid!r} is not a sequence: use increasing fractions in (0, 1)"
            )
        grid = [check_amount(a, "grid[i]") for a in self.grid]
        if not grid or grid[0] <= 0 or grid != sorted(set(grid)):
            raise DfcompressError(
                f"grid={list(self.grid)!r} is invalid: use increasing fractions in (0, 1)"
            )
        for flag in ("sensitivity", "recalibrate_bn", "keep_masks"):
            check_bool(getattr(self, flag), flag)
        if self.stop_below is not None:
            check_number(self.stop_below, "stop_below")
        if self.schedule is not None and not callable(self.schedule):
            raise DfcompressError(
                f"schedule={self.schedule!r} is not callable: use (step, steps, target) -> amount"
            )
        if self.sensitivity and self.method != "l1":
            raise DfcompressError(
                f"sensitivity=True works with method='l1', not method={self.method!r}"
            )
        if self.sensitivity and isinstance(self.amount, Mapping):
            raise DfcompressError(
                "sensitivity=True allocates per-layer amounts itself: give one target fraction, "
                f"not amount={dict(self.amount)!r}"
            )


class Pruner:
    """Prune models by one :class:`PruneConfig`.

    Args:
        config: The configuration (default ``PruneConfig()``: 50 % L1 global).
        **overrides: Fields replacing those of ``config``.

    >>> import torch
    >>> from torch import nn
    >>> from dfcompress.prune.unstructured import sparsity
    >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    >>> pruner = Pruner(amount=0.5, sensitivity=True)
    >>> small = pruner.apply(net, calibration=torch.randn(32, 8), progress=False)
    >>> sparsity(small), pruner.last_sensitivity is not None
    (0.5, True)
    """

    def __init__(self, config: PruneConfig | None = None, **overrides: Any) -> None:
        if config is not None and not isinstance(config, PruneConfig):
            raise DfcompressError(
                f"config={short(config)} is not a PruneConfig: pass PruneConfig(...) or "
                "keyword options such as Pruner(amount=0.5)"
            )
        unknown = sorted(set(overrides) - {f.name for f in fields(PruneConfig)})
        if unknown:
            raise DfcompressError(
                f"Pruner got unknown options {unknown}: the options are "
                f"{', '.join(f.name for f in fields(PruneConfig))}"
            )
        base = config if config is not None else PruneConfig()
        self.config = replace(base, **overrides) if overrides else base
        self.last_sensitivity: SensitivityResult | None = None

    def __repr__(self) -> str:
        return f"Pruner({self.config!r})"

    make_permanent = staticmethod(make_permanent)

    def scan(
        self,
        model: nn.Module,
        *,
        calibration: Iterable[Any] | torch.Tensor | None = None,
        metric: Metric | None = None,
        example_inputs: torch.Tensor | None = None,
        progress: bool = True,
        executor: Executor = None,
    ) -> SensitivityResult:
        """Scan ``model`` and allocate amounts for the configured target and strategy.

        ``executor`` runs the scan on Ray (see :func:`~dfcompress.prune.scan`).
        """
        c = self.config
        check_model(model)
        check_callable(metric, "metric", "(output, reference) -> float")
        calibration = calibration_inputs(calibration, limit=c.n_samples)
        if example_inputs is not None:
            check_tensor(example_inputs, "example_inputs")
        target = c.amount if not isinstance(c.amount, Mapping) else max(c.amount.values())
        res = scan(
            model,
            calibration=calibration,
            metric=metric,
            amounts=c.grid,
            select=c.select,
            n_samples=c.n_samples,
            example_inputs=example_inputs,
            stop_below=c.stop_below,
            progress=progress,
            executor=executor,
        )
        self.last_sensitivity = allocate(res, float(target), strategy=c.strategy)
        return self.last_sensitivity

    def apply(
        self,
        model: nn.Module,
        *,
        calibration: Iterable[Any] | torch.Tensor | None = None,
        metric: Metric | None = None,
        finetune: Finetune | None = None,
        example_inputs: torch.Tensor | None = None,
        inplace: bool = False,
        progress: bool = True,
        executor: Executor = None,
    ) -> nn.Module:
        """Prune ``model`` (a copy unless ``inplace``) and return it.

        ``executor`` runs the sensitivity scan on Ray (see :func:`~dfcompress.prune.scan`).
        """
        c = self.config
        check_model(model)
        has_layers(model, what="prune")
        check_bool(inplace, "inplace")
        check_bool(progress, "progress")
        check_callable(metric, "metric", "(output, reference) -> float")
        check_callable(finetune, "finetune", "(model, step) -> None")
        if example_inputs is not None:
            check_tensor(example_inputs, "example_inputs")
        tied = tied_layers(model) if c.method == "structured" else []
        if tied:
            raise DfcompressError(
                f"{type(model).__name__} ties weights between {tied[0][0]!r} and {tied[0][1]!r}: "
                "structured pruning would remove channels of one and silently untie them; "
                "prune with method='l1' (which keeps ties), or untie the weights first"
            )
        # read once (up to what any step uses): a generator serves the scan, every
        # pruning step and BatchNorm re-estimation
        calibration = calibration_inputs(calibration, limit=max(c.n_samples, _BN_SAMPLES))
        if not inplace:
            model = copy.deepcopy(model)
        amount: AmountSpec = c.amount
        scope: Scope = c.scope
        if c.sensitivity:
            res = self.scan(
                model,
                calibration=calibration,
                metric=metric,
                example_inputs=example_inputs,
                progress=progress,
                executor=executor,
            )
            amount, scope = {n: a for n, a in res.amounts.items() if a > 0}, "local"
            if not amount:
                return model
        target = max(amount.values()) if isinstance(amount, Mapping) else float(amount)
        if target == 0.0:
            return model

        def scaled(a: float) -> AmountSpec:
            if isinstance(amount, Mapping):
                return {k: min(v * a / target, v) for k, v in amount.items()}
            return a

        if c.method == "l1":

            def prune_to(m: nn.Module, a: float) -> nn.Module:
                return l1_unstructured(
                    m, scaled(a), scope=scope, select=c.select, keep_masks=True, inplace=True
                )

        else:
            from dfcompress.prune.structured import prune_channels

            done = [0.0]

            def relative(v: float, a: float) -> float:
                # Channels removed earlier are gone: prune a fraction of what remains.
                cur, prev = v * a / target, v * done[0] / target
                return 1.0 - (1.0 - cur) / (1.0 - prev)

            def prune_to(m: nn.Module, a: float) -> nn.Module:
                spec: AmountSpec
                if isinstance(amount, Mapping):
                    spec = {k: relative(v, a) for k, v in amount.items()}
                else:
                    spec = relative(float(amount), a)
                done[0] = a
                return prune_channels(
                    m,
                    spec,
                    importance=c.importance,
                    example_inputs=example_inputs,
                    calibration=calibration,
                    ignore=c.ignore,
                    inplace=True,
                )

        model = run_schedule(
            model,
            prune_to,
            target,
            steps=c.steps,
            schedule=c.schedule,
            finetune=finetune,
            bn_data=calibration if c.recalibrate_bn else None,
            progress=progress,
        )
        if c.method == "l1" and not c.keep_masks:
            make_permanent(model)
        return model
