"""Calibration inputs for a sensitivity scan: from the user's data or synthesized."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._modes import eval_mode
from dfcompress.errors import DfcompressError

__all__ = ["calibration_batch", "guess_input_shape"]

_TRY_SIZES = (64, 128, 224)
_SYNTH_SAMPLES = 16
_SYNTH_STEPS = 20


def _declared_shape(model: nn.Module) -> tuple[int, ...] | None:
    for attr in ("dfc_input_shape",):
        v = getattr(model, attr, None)
        if isinstance(v, (tuple, list)) and v:
            return tuple(int(d) for d in v)
    for attr in ("pretrained_cfg", "default_cfg"):  # timm models
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
            return tuple(int(d) for d in cfg["input_size"])
    return None


@torch.no_grad()
def guess_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The per-sample input shape: declared by the model, or the smallest image it accepts.

    Tries ``model.dfc_input_shape``, timm's ``pretrained_cfg["input_size"]``, then
    ``(C, s, s)`` for s in 64, 128, 224 where C is the stem conv's input channels.
    """
    declared = _declared_shape(model)
    if declared is not None:
        return declared
    stem = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if stem is None:
        raise DfcompressError(
            f"cannot guess the input shape of {type(model).__name__}: pass calibration data "
            "or example_inputs"
        )
    channels = stem.in_channels
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with eval_mode(model):
        for s in _TRY_SIZES:
            shape: tuple[int, ...] = (channels, s, s)
            if isinstance(stem, nn.Conv3d):
                shape = (channels, 8, s, s)
            try:
                model(torch.zeros((2, *shape), device=device))
            except Exception:
                continue
            return shape
    raise DfcompressError(
        f"{type(model).__name__} accepts no input of shape (N, {channels}, s, s) for s in "
        f"{_TRY_SIZES}: pass calibration data or example_inputs"
    )


def calibration_batch(
    model: nn.Module,
    calibration: Iterable[Any] | torch.Tensor | None,
    *,
    n_samples: int,
    example_inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One batch of up to ``n_samples`` inputs, on the model's device.

    Without calibration data the inputs are synthesized from the model alone:
    at most 16 samples optimised for 20 steps to match its BatchNorm statistics
    (``dfcompress._datafree.synthesize_inputs``), or seeded Gaussian noise for a
    model without BatchNorm, at the shape of ``example_inputs`` or
    :func:`guess_input_shape`.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if calibration is not None:
        parts = calibration_inputs(calibration, limit=n_samples) or []
        return torch.cat(parts).to(device)
    if example_inputs is not None:
        shape = tuple(example_inputs.shape[1:])
    else:
        shape = guess_input_shape(model)
    has_bn = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
        for m in model.modules()
    )
    if has_bn:
        from dfcompress._datafree import synthesize_inputs

        # Agreement scores need inputs in the right range, not a converged
        # optimisation: a few steps on a small batch keep data-free scans cheap.
        x = synthesize_inputs(model, shape, min(n_samples, _SYNTH_SAMPLES), steps=_SYNTH_STEPS)
    else:  # nothing in the model describes its input distribution: seeded noise
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((n_samples, *shape), generator=gen)
    return x.to(device)
