"""Data-free calibration inputs: random inputs optimised to match BatchNorm statistics.

ZeroQ-style: starting from Gaussian noise, inputs are optimised so that the
batch mean and standard deviation at the input of every BatchNorm layer match
that layer's running statistics. The result stands in for calibration data
when none is given. A model without BatchNorm has no statistics to match.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dfcompress._modes import restore_modes, training_flags
from dfcompress.errors import DfcompressError

__all__ = ["default_input_shape", "synthesize_inputs"]

_log = logging.getLogger("dfcompress")

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def synthesize_inputs(
    model: nn.Module,
    input_shape: Sequence[int],
    n: int,
    *,
    steps: int = 50,
    seed: int = 0,
    lr: float = 0.2,
    max_seconds: float = 60.0,
) -> torch.Tensor:
    """``n`` inputs of shape ``input_shape`` whose BatchNorm statistics match the model's.

    Args:
        model: A model with BatchNorm layers that track running statistics
            (not changed; its train/eval mode is restored).
        input_shape: One sample's shape, without the batch dimension, e.g. ``(3, 224, 224)``.
        n: Number of samples.
        steps: Adam steps (ZeroQ uses 500; 50 gets most of the way at a tenth of the cost).
        seed: Seed of the initial noise (results are deterministic for a seed).
        lr: Adam learning rate.
        max_seconds: Time budget. One optimisation step costs about three
            forwards of all ``n`` samples, so a large model at full resolution
            (a BNext at 224 x 224 on a laptop CPU: seconds per sample) would run
            for hours. Timed forwards of one sample estimate the cost first:
            when one step of ``n`` samples would not fit, fewer samples are
            synthesized; the steps stop before one would end past the budget.
            Either way a notice goes to the ``"dfcompress"`` logger; within the
            budget the result depends on the seed alone.

    Returns:
        A float tensor of shape ``(n, *input_shape)`` on the model's device
        (fewer samples when the time budget required it).

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> x = synthesize_inputs(net, (3, 8, 8), 2, steps=3)
    >>> x.shape
    torch.Size([2, 3, 8, 8])
    """
    bns = [m for m in model.modules() if isinstance(m, _BNS) and m.running_mean is not None]
    if not bns:
        raise DfcompressError(
            f"{type(model).__name__} has no BatchNorm with running statistics, so calibration "
            "inputs cannot be synthesized: pass calibration data (a loader or a tensor)"
        )
    if n < 1 or steps < 0:
        raise DfcompressError(f"n={n} and steps={steps} must be >= 1 and >= 0")
    if not max_seconds > 0:
        raise DfcompressError(f"max_seconds={max_seconds!r} is invalid: use a positive number")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    flags = training_flags(model)
    model.eval()
    try:
        if steps:
            n = _fit_samples(model, input_shape, n, device, max_seconds)
        return _optimise(model, bns, input_shape, n, steps, seed, lr, device, max_seconds)
    finally:
        restore_modes(flags)


def _fit_samples(
    model: nn.Module,
    input_shape: Sequence[int],
    n: int,
    device: torch.device,
    max_seconds: float,
) -> int:
    """``n``, or fewer samples when one optimisation step of ``n`` would not fit the budget.

    Two forwards of one sample time the model (the first pays one-time costs).
    """
    x = torch.zeros((1, *input_shape), device=device)
    times = []
    try:
        with torch.no_grad():
            for _ in range(2):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise DfcompressError(
            f"{type(model).__name__} cannot run an input of shape {(1, *input_shape)} "
            f"({type(e).__name__}: {str(e)[:200]}): pass input_shape= or calibration data"
        ) from e
    per_sample = 3.0 * max(min(times), 1e-6)  # forward + backward
    if per_sample * n <= max_seconds:
        return n
    fit = max(1, int(max_seconds // per_sample))
    _log.warning(
        "dfcompress: one step of synthesizing %d calibration inputs of shape %s would take "
        "about %.0f s; synthesizing %d to stay within %.0f s (pass calibration data for "
        "better accuracy)",
        n,
        tuple(input_shape),
        per_sample * n,
        fit,
        max_seconds,
    )
    return fit


def _optimise(
    model: nn.Module,
    bns: Sequence[nn.Module],
    input_shape: Sequence[int],
    n: int,
    steps: int,
    seed: int,
    lr: float,
    device: torch.device,
    max_seconds: float,
) -> torch.Tensor:
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=gen).to(device).requires_grad_(True)
    losses: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        h = args[0]
        dims = [d for d in range(h.dim()) if d != 1]
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        rm, rv = mod.running_mean, mod.running_var
        if not (isinstance(rm, torch.Tensor) and isinstance(rv, torch.Tensor)):  # pragma: no cover
            return
        losses.append(
            torch.norm(mean - rm) + torch.norm(torch.sqrt(var + 1e-8) - torch.sqrt(rv + 1e-8))
        )

    handles = [b.register_forward_pre_hook(hook) for b in bns]
    opt = torch.optim.Adam([x], lr=lr)
    try:
        for step in range(steps):
            step_start = time.perf_counter()
            losses.clear()
            opt.zero_grad()
            model(x)
            loss = torch.stack(losses).sum()
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            opt.step()
            now = time.perf_counter()
            if step + 1 < steps and (now - start) + (now - step_start) > max_seconds:
                _log.warning(
                    "dfcompress: synthesizing calibration inputs stopped after %d of %d steps "
                    "at the %.0f s time budget (pass calibration data for better accuracy)",
                    step + 1,
                    steps,
                    max_seconds,
                )
                break
    finally:
        for h in handles:
            h.remove()
    return x.detach()


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """An input shape inferred from the model's first conv.

    ``(C, 224)`` for Conv1d, ``(C, 224, 224)`` for Conv2d and ``(C, 8, 112, 112)``
    for Conv3d, with C the conv's ``in_channels``.

    >>> default_input_shape(nn.Sequential(nn.Conv2d(6, 4, 3)))
    (6, 224, 224)
    """
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            return (m.in_channels, 224)
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 224, 224)
        if isinstance(m, nn.Conv3d):
            return (m.in_channels, 8, 112, 112)
    raise DfcompressError(
        f"cannot infer the input shape of {type(model).__name__} (it has no conv layer): "
        "pass input_shape=(C, H, W) or calibration data"
    )
