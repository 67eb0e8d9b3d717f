"""Reconstruction after unstructured pruning: the kept weights make up for the pruned ones.

Zeroing a weight changes the layer's output by ``w_j x_j``; the weights that
are kept can absorb much of that change on the inputs the layer actually sees.
Layers are reconstructed one after the other, in the order the forward pass
reaches them, each on the inputs the pruned model (reconstructed so far) gives
it, ``X``, towards the output the unpruned layer gives on the unpruned model's
inputs, ``W0 X0``. The weight that reaches that output best is
``W* = W0 (X0 X^T) (X X^T)^-1``, so it also makes up for the error of the
layers before; with ``H = X X^T`` (per group of a grouped or depthwise conv)
the error of a pruned weight ``W`` is ``tr((W* - W) H (W* - W)^T)`` plus a
constant. Columns are visited in order and, as in SparseGPT (Frantar and
Alistarh, 2023), each pruned weight's removal is spread over the columns not
yet visited through the Cholesky factor of ``H^-1`` (damped by 1 % of its mean
diagonal), the optimal-brain-surgeon update.

Which weights are pruned can also be chosen here: within each block of 128
columns the layer prunes as many weights as magnitude pruning did there, but
the ones whose removal costs least, ``w^2 / [H^-1]_jj^2`` (SparseGPT's
saliency), over the whole layer. The number of weights each layer loses is
unchanged, so global, capped or sensitivity-allocated amounts are kept.

A layer keeps magnitude pruning's result where reconstruction does not lower
that error, or where the calibration data gives it fewer than
:data:`MIN_SAMPLES_PER_INPUT` input samples per weight of an output row.
Conv2d layers with zero padding and Linear layers are reconstructed; others
keep magnitude pruning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dfcompress.quant._gptq import MAX_COLUMNS, Geometry, _inverse_factor, _output_error
from dfcompress.quant._sequential import MIN_SAMPLES_PER_INPUT as _MIN_SAMPLES
from dfcompress.quant._sequential import forward_order as _order
from dfcompress.quant._sequential import paired_grams

__all__ = ["obs_prune", "reconstruct"]

_BLOCK = 128

#: A layer is reconstructed only from at least this many input samples (output
#: positions over the calibration data) per weight of an output row (the rule of
#: :mod:`dfcompress.quant._sequential`).
MIN_SAMPLES_PER_INPUT = _MIN_SAMPLES


def _geometry(m: nn.Module) -> Geometry | bool:
    """The layer's geometry for :func:`gram`, or False when it is not reconstructed."""
    if type(m) is nn.Linear:
        return None
    if type(m) is nn.Conv2d and not isinstance(m.padding, str) and m.padding_mode == "zeros":
        return (
            tuple(int(k) for k in m.kernel_size),
            tuple(int(s) for s in m.stride),
            tuple(int(p) for p in m.padding),
            tuple(int(d) for d in m.dilation),
            int(m.groups),
        )
    return False


def _solve_target(w0: torch.Tensor, c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W0 C (H + damping)^-1`` per group, for ``w0`` ``(groups, rows, per)``."""
    n = h.shape[-1]
    damp = 0.01 * h.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    hd = h + damp[:, None, None] * torch.eye(n, dtype=h.dtype, device=h.device)
    hd.diagonal(dim1=-2, dim2=-1).masked_fill_(h.diagonal(dim1=-2, dim2=-1) == 0, 1.0)
    low, info = torch.linalg.cholesky_ex(hd)
    rhs = torch.bmm(w0, c).transpose(1, 2)  # (groups, per, rows)
    sol = torch.cholesky_solve(rhs, low).transpose(1, 2)
    good = (info == 0) & torch.isfinite(sol).flatten(1).all(1)
    # An input the calibration data never reaches says nothing about its weights: keep them.
    dead = (h.diagonal(dim1=-2, dim2=-1) == 0)[:, None, :]
    return torch.where(good[:, None, None] & ~dead, sol, w0)


def obs_prune(
    w: torch.Tensor,
    keep: torch.Tensor,
    h: torch.Tensor,
    choose: bool = True,
    target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prune with the updates of the optimal brain surgeon for input Gram ``h``.

    Args:
        w: The dense weight ``(out, ...)``; rows split evenly into ``h.shape[0]`` groups.
        keep: The magnitude-pruning mask (True = kept), shaped like ``w``.
        h: ``(groups, per, per)`` from :func:`dfcompress.quant._gptq.gram`.
        choose: Choose the pruned weights by saliency (as many per block of
            columns as ``keep`` prunes there, over the whole layer); False:
            prune exactly ``~keep``.
        target: The weight to approach, grouped ``(groups, rows, per)``
            (default ``w``); magnitude pruning's ``w * keep`` is the fallback.

    Returns:
        The pruned weight (zeros where pruned), and the output errors, per
        group, of ``w * keep`` and of the weight returned.
    """
    groups = h.shape[0]
    rows = w.shape[0] // groups
    w0 = w.detach().reshape(groups, rows, -1).double()
    wg = w0 if target is None else target.double()
    kg = keep.reshape(groups, rows, -1)
    plain = w0 * kg
    h = h.double()
    err_plain = _output_error(wg - plain, h)
    hd = h.clone()
    hd.diagonal(dim1=-2, dim2=-1).masked_fill_(h.diagonal(dim1=-2, dim2=-1) == 0, 1.0)
    factor, ok = _inverse_factor(hd)
    work = wg.clone()
    out = torch.zeros_like(work)
    pruned = torch.zeros_like(kg)
    n = work.shape[2]
    for i1 in range(0, n, _BLOCK):
        i2 = min(i1 + _BLOCK, n)
        block = work[:, :, i1:i2].clone()
        fb = factor[:, i1:i2, i1:i2]
        drop = ~kg[:, :, i1:i2]
        if choose:
            count = int(drop.sum())
            d = fb.diagonal(dim1=-2, dim2=-1)[:, None, :].clamp_min(1e-30)
            cost = (block / d).pow(2).flatten()
            drop = torch.zeros_like(cost, dtype=torch.bool)
            if count:
                drop[torch.sort(cost, stable=True).indices[:count]] = True
            drop = drop.view_as(block)
        pruned[:, :, i1:i2] = drop
        errs = torch.zeros_like(block)
        for i in range(i2 - i1):
            col = block[:, :, i]
            q = torch.where(drop[:, :, i], torch.zeros_like(col), col)
            out[:, :, i1 + i] = q
            e = (col - q) / fb[:, i, i].clamp_min(1e-30)[:, None]
            block[:, :, i:] -= e[:, :, None] * fb[:, i, i:][:, None, :]
            errs[:, :, i] = e
        work[:, :, i2:] -= torch.bmm(errs, factor[:, i1:i2, i2:])
    out = torch.where(pruned, torch.zeros_like(out), out)
    err = _output_error(wg - out, h)
    better = ok & torch.isfinite(err) & (err < err_plain)
    if choose:  # the counts were shared across groups: all groups or none
        whole = bool(ok.all()) and bool(torch.isfinite(err).all())
        better = torch.full_like(better, whole and float(err.sum()) < float(err_plain.sum()))
    chosen = torch.where(better[:, None, None], out, plain)
    kept = torch.where(better, err, err_plain)
    return chosen.reshape(w.shape).to(w.dtype), err_plain, kept


def _weight_of(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def reconstruct(
    pruned: nn.Module,
    dense: nn.Module,
    data: Iterable[Any],
    choose: bool = True,
) -> dict[str, tuple[float, float]]:
    """Reconstruct the pruned conv/linear layers of ``pruned`` (in place) from ``dense``.

    ``dense`` is the model before pruning (same module names); ``data`` are
    calibration batches (tensors).

    Returns:
        ``{layer: (output error of magnitude pruning, of the result)}`` for the
        layers reconstructed.
    """
    from dfcompress._modes import eval_mode

    batches = [x for x in data if isinstance(x, torch.Tensor)]
    if not batches:
        return {}
    dense_mods = dict(dense.named_modules())
    targets: dict[str, tuple[nn.Module, nn.Module, Geometry]] = {}
    for name, m in pruned.named_modules():
        geom = _geometry(m)
        d = dense_mods.get(name)
        w = getattr(m, "weight", None)
        if geom is False or d is None or not isinstance(w, torch.Tensor):
            continue
        if w[0].numel() > MAX_COLUMNS or not bool((w == 0).any()):
            continue
        targets[name] = (m, d, geom)  # type: ignore[assignment]
    report: dict[str, tuple[float, float]] = {}
    with torch.no_grad(), eval_mode(dense), eval_mode(pruned):
        for name in _order(dense, set(targets), batches[0]):
            m, d, geom = targets[name]
            grams = paired_grams(pruned, m, dense, d, batches, geom)
            if grams is None:
                continue
            h, c, seen = grams
            if seen < MIN_SAMPLES_PER_INPUT * h.shape[-1]:
                continue  # too few input samples to fit this many weights without overfitting
            w0 = _weight_of(d).detach()
            weight = _weight_of(m)
            groups = h.shape[0]
            target = _solve_target(w0.reshape(groups, w0.shape[0] // groups, -1).double(), c, h)
            keep = weight != 0
            new, e0, e1 = obs_prune(w0, keep, h, choose=choose, target=target)
            weight.copy_(new.to(weight.dtype))
            weight.masked_fill_(new == 0, 0.0)  # +0.0: a -0.0 would not store sparsely
            report[name] = (float(e0.sum()), float(e1.sum()))
    return report
