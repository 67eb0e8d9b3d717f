"""Scales that keep values on a grid through zero off the rounding ties.

Tensors computed from 8-bit images often hold only multiples of a grid step
``g``: an image in ``[0, 1]`` holds multiples of 1/255, and so does an NPR
residual (the image minus its down- and up-sampled copy). A scale calibrated
on such a tensor can put a share of those points exactly half-way between two
codes: the trained NPR + BNext detector's first quantizer had 4.3 % of its
inputs on ties at its percentile scale of ``(14/15)/255``. Which way a tie
rounds then depends on the last bit of the arithmetic before it, which each
runtime does its own way (``x / s`` or ``x * (1/s)``, its own order of the
residual's subtraction), so the deployed file and the eager model disagree on
a code, and in a binary network a code moved by one can flip a sign: 9.5 % of
that model's decisions changed when its input moved by 1e-6.

:func:`tie_free_scale` moves such a scale to the nearest one at or above it
whose codes for the grid points are integers (``g / n``) or fractions with an
odd denominator (``g * p / q``, ``p`` odd): no grid point is then nearer than
``1 / (2p)`` of a step to a tie, and the rounding has no preferred direction
(shrinking the range by a fixed factor, the other way to avoid the ties,
rounds every tie towards zero).

>>> g = 1 / 255
>>> x = torch.arange(-100, 101, dtype=torch.float32) * g
>>> found = grid_of(x)
>>> round(found[0] * 255, 6), found[1:]
(1.0, (100, 200))
>>> round(tie_free_scale(g * 14 / 15, g) * 255, 6)  # the percentile scale above
1.0
>>> round(tie_free_scale(g * 2, g) / g, 4)  # 2 steps: every odd point a tie; 101 / 50 has none
2.02
"""

from __future__ import annotations

import math

import torch

__all__ = ["Grid", "grid_of", "merge_grids", "tie_free_scale", "usable"]

#: Largest grid index accepted (beyond it every float tensor looks like a grid).
MAX_INDEX = 4096
#: Distance from an integer, in grid steps, within which a value counts as on the grid.
TOLERANCE = 1e-3
#: Distinct non-zero grid magnitudes a tensor must show before its grid is used.
MIN_LEVELS = 3
#: Non-zero values per distinct magnitude needed as well: values on a grid repeat
#: (a handful of evenly spaced calibration values is no evidence of one).
MIN_REPEATS = 4
#: How far (relatively) above the calibrated scale a tie-free scale may lie.
WIDEN = 0.01
_PROBE = 4096


def _on_grid(values: torch.Tensor, g: float) -> bool:
    k = values / g
    return bool(((k - k.round()).abs() <= TOLERANCE).all() and bool(k.abs().max() <= MAX_INDEX))


Grid = tuple[float, int, int]


def grid_of(x: torch.Tensor) -> Grid | None:
    """``(g, levels, count)`` if every value of ``x`` is an integer multiple of ``g``, else None.

    ``g`` is the smallest non-zero magnitude of ``x``, ``levels`` the number of
    distinct non-zero magnitudes in units of ``g`` and ``count`` the number of
    non-zero values. An all-zero tensor gives ``(0.0, 0, 0)`` (no evidence either way).

    >>> grid_of(torch.tensor([0.0, 0.25, -0.5, 1.0]))
    (0.25, 3, 3)
    >>> grid_of(torch.tensor([0.1, 0.15])) is None
    True
    """
    flat = x.detach().reshape(-1).to(torch.float32)
    probe = flat[:_PROBE]
    nz = probe[probe != 0]
    if nz.numel() and not _on_grid(probe, float(nz.abs().min())):
        return None  # most float tensors stop here, after a few thousand values
    mags = flat[flat != 0].abs()
    if not mags.numel():
        return 0.0, 0, 0
    g = float(mags.min())
    if not _on_grid(mags, g):
        return None
    return g, int(torch.unique((mags / g).round()).numel()), int(mags.numel())


def merge_grids(a: Grid, b: Grid) -> Grid | None:
    """The grid of two tensors' values from the grids of each (None: no common grid).

    ``levels`` is bounded by the larger of the two (it is only compared with a
    minimum), ``count`` summed.

    >>> merge_grids((0.5, 4, 10), (0.25, 3, 8))
    (0.25, 4, 18)
    >>> merge_grids((0.5, 4, 10), (0.3, 3, 8)) is None
    True
    """
    if a[0] == 0.0:
        return b
    if b[0] == 0.0:
        return a
    small, large = sorted((a[0], b[0]))
    ratio = large / small
    if abs(ratio - round(ratio)) > TOLERANCE:
        return None
    return small, max(a[1], b[1]), a[2] + b[2]


def usable(grid: Grid | None) -> bool:
    """Whether ``grid`` is evidence enough: a few levels, each value repeated.

    >>> usable((1 / 255, 120, 20000)), usable((0.2, 8, 11))
    (True, False)
    """
    return grid is not None and grid[1] >= MIN_LEVELS and grid[2] >= MIN_REPEATS * grid[1]


def tie_free_scale(scale: float, g: float) -> float:
    """The scale at or just above ``scale`` that puts no multiple of ``g`` on a tie.

    At most ``scale`` codes per step (``scale <= g``): ``g / n`` with the largest
    ``n`` keeping it at or above ``scale``, so every grid point is a whole code.
    Coarser: ``g * p / q`` with ``p`` odd, the smallest such ``p`` within
    :data:`WIDEN` above ``scale``.

    >>> tie_free_scale(0.3, 1.0)  # g / 3
    0.3333333333333333
    >>> tie_free_scale(3.0, 1.0)  # already odd: unchanged
    3.0
    """
    m = scale / g
    if m <= 1.0 + 1e-6:
        return g / max(1, math.floor(1.0 / m + 1e-9))
    p = 1
    while True:
        q = math.floor(p / m + 1e-9)
        if q >= 1 and p / q <= m * (1.0 + WIDEN):
            return g * p / q
        p += 2
