"""The machinery behind :func:`dfcompress.compress`: one recipe step applied to a model.

The public verbs :func:`dfcompress.prune` and :func:`dfcompress.quantize` do
the work when they are available; otherwise the step runs through
:class:`~dfcompress.prune.pruner.Pruner` and
:class:`~dfcompress.quant.quantizer.Quantizer` directly, with the same
defaults (global L1 with sensitivity allocation; packed integer weights).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.recipe import MixedPrecision, Prune, Quantize, Step

__all__ = ["PRUNE_OPTIONS", "QUANT_OPTIONS", "apply_step", "split_options"]

Calibration = Iterable[Any] | torch.Tensor | None

PRUNE_OPTIONS: tuple[str, ...] = (
    "scope",
    "sensitivity",
    "strategy",
    "grid",
    "n_samples",
    "importance",
    "ignore",
    "prune_select",
    "example_inputs",
    "steps",
    "recalibrate_bn",
)
QUANT_OPTIONS: tuple[str, ...] = ("select", "bias_correction", "fold_bn", "max_samples", "pack")


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``compress(**options)`` into pruning and quantization keyword arguments."""
    prune_opts: dict[str, Any] = {}
    quant_opts: dict[str, Any] = {}
    for key, value in options.items():
        if key in PRUNE_OPTIONS:
            prune_opts["select" if key == "prune_select" else key] = value
        elif key in QUANT_OPTIONS:
            quant_opts[key] = value
        else:
            raise DfcompressError(
                f"compress() got an unknown option {key!r}: pruning options are "
                f"{', '.join(PRUNE_OPTIONS)}; quantization options are {', '.join(QUANT_OPTIONS)}"
            )
    return prune_opts, quant_opts


def _verb(module: str, name: str) -> Callable[..., nn.Module] | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def _prune(
    model: nn.Module, step: Prune, calibration: Calibration, progress: bool, opts: dict[str, Any]
) -> nn.Module:
    kwargs: dict[str, Any] = {"sensitivity": step.method == "l1", **opts}
    if step.method == "l1":
        kwargs.setdefault("scope", "global")
    else:
        kwargs.pop("sensitivity")
    verb = _verb("dfcompress.prune.api", "prune")
    if verb is not None:
        return verb(
            model,
            step.amount,
            method=step.method,
            calibration=calibration,
            inplace=True,
            progress=progress,
            **kwargs,
        )
    from dfcompress.prune.pruner import Pruner

    example = kwargs.pop("example_inputs", None)
    pruner = Pruner(amount=step.amount, method=step.method, **kwargs)
    return pruner.apply(
        model, calibration=calibration, example_inputs=example, inplace=True, progress=progress
    )


def _quantize(
    model: nn.Module,
    step: Quantize | MixedPrecision,
    calibration: Calibration,
    progress: bool,
    opts: dict[str, Any],
) -> nn.Module:
    if step.needs_calibration and calibration is None:
        raise DfcompressError(
            f"recipe token {str(step)!r} quantizes activations, whose ranges come from data: "
            "pass calibration=<a loader or a tensor of inputs>"
        )
    config: Any = step.config_name if isinstance(step, Quantize) else step.rules()
    verb = _verb("dfcompress.quant.api", "quantize")
    if verb is not None:
        return verb(
            model, config, calibration=calibration, inplace=True, progress=progress, **opts
        )
    from dfcompress.quant.quantizer import Quantizer

    rules = config if isinstance(config, list) else [(opts.pop("select", None) or "all", config)]
    opts.pop("select", None)
    pack = bool(opts.pop("pack", True))
    max_samples = opts.pop("max_samples", None)
    quantizer = Quantizer(rules, **opts)
    prepared = quantizer.prepare(model, inplace=True)
    if step.needs_calibration:
        quantizer.calibrate(prepared, calibration, progress=progress, max_samples=max_samples)
    return quantizer.convert(prepared, pack=pack, inplace=True)


def apply_step(
    model: nn.Module,
    step: Step,
    calibration: Calibration,
    *,
    progress: bool,
    prune_options: dict[str, Any],
    quant_options: dict[str, Any],
) -> nn.Module:
    """Apply one recipe step to ``model`` in place (the caller owns the copy)."""
    if isinstance(step, Prune):
        return _prune(model, step, calibration, progress, dict(prune_options))
    return _quantize(model, step, calibration, progress, dict(quant_options))
