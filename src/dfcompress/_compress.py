"""The machinery behind :func:`dfcompress.compress`: one recipe step applied to a model.

Each step calls the public verb (:func:`dfcompress.prune.api.prune` or
:func:`dfcompress.quant.api.quantize`) with the recipe's defaults: global L1
pruning with sensitivity allocation for ``pNN``, channel pruning for ``sNN``,
and quantized weights packed into real int8 / int4 storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.recipe import MixedPrecision, Prune, Quantize, Step

__all__ = ["PRUNE_OPTIONS", "QUANT_OPTIONS", "apply_step", "split_options"]

PRUNE_OPTIONS: tuple[str, ...] = (
    "scope",
    "sensitivity",
    "strategy",
    "metric",
    "steps",
    "schedule",
    "finetune",
    "prune_select",
    "importance",
    "ignore",
    "recalibrate_bn",
    "example_inputs",
)
"""``compress`` options passed to the pruning verb (``prune_select`` as its ``select``)."""

QUANT_OPTIONS: tuple[str, ...] = (
    "select",
    "max_samples",
    "input_shape",
    "fold_bn",
    "bias_correction",
    "pack",
    "quant_finetune",
    "target",
)
"""``compress`` options passed to the quantization verb (``quant_finetune`` as its ``finetune``)."""


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``compress(**options)`` into pruning and quantization keyword arguments.

    >>> split_options({"prune_select": "conv", "pack": False})
    ({'select': 'conv'}, {'pack': False})
    >>> split_options({"finetune": len, "quant_finetune": repr})
    ({'finetune': <built-in function len>}, {'finetune': <built-in function repr>})
    """
    prune_opts: dict[str, Any] = {}
    quant_opts: dict[str, Any] = {}
    for key, value in options.items():
        if key in PRUNE_OPTIONS:
            prune_opts["select" if key == "prune_select" else key] = value
        elif key in QUANT_OPTIONS:
            quant_opts["finetune" if key == "quant_finetune" else key] = value
        else:
            raise DfcompressError(
                f"compress() got an unknown option {key!r}: pruning options are "
                f"{', '.join(PRUNE_OPTIONS)}; quantization options are {', '.join(QUANT_OPTIONS)}"
            )
    return prune_opts, quant_opts


def _prune(
    model: nn.Module,
    step: Prune,
    calibration: Iterable[Any] | torch.Tensor | None,
    progress: bool,
    opts: dict[str, Any],
) -> nn.Module:
    from dfcompress.prune.api import prune

    if step.method == "l1":
        opts.setdefault("sensitivity", True)
        opts.setdefault("scope", "global")
    elif calibration is not None:
        # Removing channels shifts every later BatchNorm's input statistics;
        # re-estimating them on the calibration data recovers most of the loss
        # (on the demo detector s50: accuracy at 0.5 from 0.55 to 0.90).
        opts.setdefault("recalibrate_bn", True)
    return prune(
        model,
        step.amount,
        method=step.method,
        calibration=calibration,
        inplace=True,
        progress=progress,
        **opts,
    )


def _quantize(
    model: nn.Module,
    step: Quantize | MixedPrecision,
    calibration: Iterable[Any] | torch.Tensor | None,
    progress: bool,
    opts: dict[str, Any],
) -> nn.Module:
    from dfcompress.quant.api import quantize

    config: Any = step.config_name if isinstance(step, Quantize) else step.rules()
    own = opts.get("target") is None
    if own:
        opts.setdefault("pack", True)
    else:
        # A target's quantized form is a new graph in its runtime's own terms; packing
        # is dfcompress's storage.
        opts.pop("pack", None)
    return quantize(model, config, calibration, inplace=own, progress=progress, **opts)


def apply_step(
    model: nn.Module,
    step: Step,
    calibration: Iterable[Any] | torch.Tensor | None,
    *,
    progress: bool,
    prune_options: dict[str, Any],
    quant_options: dict[str, Any],
) -> nn.Module:
    """Apply one recipe step to ``model`` in place (the caller owns the copy)."""
    if isinstance(step, Prune):
        return _prune(model, step, calibration, progress, dict(prune_options))
    return _quantize(model, step, calibration, progress, dict(quant_options))
