"""Observers: collect statistics of a tensor and turn them into scale and zero point.

An observer sees one or more tensors through :meth:`Observer.update` and gives
``(scale, zero_point)`` through :meth:`Observer.qparams`, shaped for its
granularity (``()`` per tensor, ``(C,)`` per channel, ``(out, groups)`` per group).

>>> obs = MinMax(-128, 127, symmetric=True)
>>> obs.update(torch.tensor([-1.0, 0.5])); obs.update(torch.tensor([2.54]))
>>> obs.qparams()
(tensor(0.0199), tensor(0, dtype=torch.int32))

A constant tensor never gives a zero scale, and NaN or Inf is an error:

>>> obs = MinMax(0, 255, symmetric=False); obs.update(torch.zeros(4)); obs.qparams()[0] > 0
tensor(True)
>>> obs.update(torch.tensor([float("nan")]))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dfcompress.errors.DfcompressError: the observed tensor contains NaN or Inf (1 of 1 values): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from dfcompress.errors import DfcompressError
from dfcompress.quant._grid import Grid, grid_of, merge_grids, tie_free_scale, usable
from dfcompress.quant.config import IntQuant, PerChannel, PerGroup, PerTensor
from dfcompress.quant.functional import calc_qparams, fake_quantize

__all__ = [
    "MSE",
    "Dynamic",
    "MinMax",
    "MovingAverageMinMax",
    "Observer",
    "Percentile",
    "check_finite",
    "make_observer",
]


def check_finite(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:
    """Raise if the minima ``lo`` / maxima ``hi`` reduced from ``x`` show NaN or Inf in it.

    NaN propagates into min/max and Inf is an extreme, so checking the reduced
    values checks every value of ``x``; ``x`` itself is only counted for the message.
    """
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DfcompressError(
            f"the observed tensor contains NaN or Inf ({bad} of {x.numel()} values): "
            "check the calibration data and the layers before this one"
        )


def _rows(x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """``x`` as a 2-D (rows, values) float tensor: one row per scale to compute."""
    x = x.detach().to(torch.float32)
    if group_size is not None:
        return x.reshape(x.shape[0], x.shape[1] // group_size, group_size, -1).reshape(
            x.shape[0] * (x.shape[1] // group_size), -1
        )
    if axis is not None:
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return x.reshape(1, -1)


class Observer(ABC):
    """Base class: statistics per row (tensor, channel or group) -> qparams.

    Args:
        qmin: Smallest integer code.
        qmax: Largest integer code.
        symmetric: Symmetric range around zero.
        axis: Channel axis (per channel) or None.
        group_size: Group size along dim 1 (per group) or None.
        restricted: Symmetric scales put the largest magnitude on ``qmax``
            (see :func:`~dfcompress.quant.functional.calc_qparams`).

    A per-tensor observer whose every value lies on a grid through zero (multiples
    of 1/255 computed from 8-bit images) gives a scale that keeps the grid's
    points off rounding ties (:func:`~dfcompress.quant._grid.tie_free_scale`):
    on a tie, the eager model and a runtime can round the same value apart.
    """

    #: Whether the quantizer recomputes the qparams at every forward.
    dynamic: bool = False

    def __init__(
        self,
        qmin: int,
        qmax: int,
        symmetric: bool,
        axis: int | None = None,
        group_size: int | None = None,
        restricted: bool = False,
    ) -> None:
        self.qmin, self.qmax, self.symmetric = qmin, qmax, symmetric
        self.axis, self.group_size = axis, group_size
        self.restricted = restricted
        self._shape: tuple[int, ...] = ()
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        #: The grid of every value seen so far ((0.0, 0, 0): none yet), None: off-grid.
        self.grid: Grid | None = (0.0, 0, 0)

    @property
    def ready(self) -> bool:
        """Whether at least one tensor was observed."""
        return self.min_val is not None

    def update(self, x: torch.Tensor) -> None:
        """Observe one tensor (raises on NaN/Inf)."""
        if self.group_size is not None:
            self._shape = (x.shape[0], x.shape[1] // self.group_size)
        elif self.axis is not None:
            self._shape = (x.shape[self.axis],)
        rows = _rows(x, self.axis, self.group_size)
        lo, hi = torch.aminmax(rows, dim=1)
        check_finite(lo, hi, x)
        self._observe(rows, lo, hi)
        if self.grid is not None and self._per_tensor:
            found = grid_of(rows)
            self.grid = None if found is None else merge_grids(self.grid, found)

    @property
    def _per_tensor(self) -> bool:
        return self.axis is None and self.group_size is None and not self.dynamic

    @abstractmethod
    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None: ...

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None or self.max_val is None:
            raise DfcompressError(
                "the observer has seen no data: run calibrate() (or a forward pass) first"
            )
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the data seen so far."""
        s, z = self._qparams()
        if self._per_tensor and self.grid is not None and usable(self.grid):
            s, z = self._off_ties(s, z, self.grid[0])
        return s.reshape(self._shape), z.reshape(self._shape)

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._range()
        return calc_qparams(lo, hi, self.qmin, self.qmax, self.symmetric, self.restricted)

    def _off_ties(
        self, s: torch.Tensor, z: torch.Tensor, g: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``s`` moved to the tie-free scale of grid ``g``; the zero point keeps the range's
        low end (a symmetric zero point stays where it is)."""
        old = float(s.reshape(()))
        new = tie_free_scale(old, g)
        scale = torch.full_like(s, new)
        if self.symmetric:
            return scale, z
        low = old * (self.qmin - float(z.reshape(())))
        zp = min(max(round(self.qmin - low / new), self.qmin), self.qmax)
        return scale, torch.full_like(z, zp)


class MinMax(Observer):
    """The running minimum and maximum."""

    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)


class Dynamic(MinMax):
    """Min/max of the current tensor only, recomputed at every forward (never frozen).

    With asymmetric per-output-row granularity this is the quantizer of the
    BNext compression study, kept so that its results can be reproduced.
    """

    dynamic = True

    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min_val, self.max_val = lo, hi


class MovingAverageMinMax(Observer):
    """Exponential moving average of per-batch min/max (``momentum`` = weight of a new batch)."""

    def __init__(
        self,
        qmin: int,
        qmax: int,
        symmetric: bool,
        axis: int | None = None,
        group_size: int | None = None,
        momentum: float = 0.01,
    ) -> None:
        if not 0.0 < momentum <= 1.0:
            raise DfcompressError(f"momentum={momentum!r} is out of range: use (0, 1]")
        self.momentum = momentum
        super().__init__(qmin, qmax, symmetric, axis, group_size)

    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.momentum * (lo - self.min_val)
            self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class Percentile(Observer):
    """Mean over batches of the ``(100 - p)``-th and ``p``-th percentiles, clipping outliers."""

    def __init__(
        self,
        qmin: int,
        qmax: int,
        symmetric: bool,
        axis: int | None = None,
        group_size: int | None = None,
        percentile: float = 99.99,
    ) -> None:
        self.percentile = percentile
        super().__init__(qmin, qmax, symmetric, axis, group_size)

    def reset(self) -> None:
        super().reset()
        self._n = 0

    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        n = rows.shape[1]
        k_hi = min(n, max(1, round(n * self.percentile / 100.0)))
        k_lo = max(1, n + 1 - k_hi)
        lo = rows.kthvalue(k_lo, dim=1).values
        hi = rows.kthvalue(k_hi, dim=1).values
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            w = 1.0 / (self._n + 1)
            self.min_val = self.min_val + w * (lo - self.min_val)
            self.max_val = self.max_val + w * (hi - self.max_val)
        self._n += 1


class MSE(Observer):
    """The clipping range, shrunk from min/max, that minimises the quantization MSE per row.

    Candidates ``alpha * [min, max]`` for ``n_grid`` values of alpha in
    ``[min_ratio, 1]`` are scored on (a subsample of) the observed values.
    """

    def __init__(
        self,
        qmin: int,
        qmax: int,
        symmetric: bool,
        axis: int | None = None,
        group_size: int | None = None,
        n_grid: int = 40,
        min_ratio: float = 0.3,
        max_values: int = 8192,
    ) -> None:
        self.n_grid, self.min_ratio, self.max_values = n_grid, min_ratio, max_values
        super().__init__(qmin, qmax, symmetric, axis, group_size)

    def reset(self) -> None:
        super().reset()
        self._samples: list[torch.Tensor] = []
        self._count = 0

    def _observe(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        if self._count < self.max_values:
            take = rows[:, : self.max_values - self._count]
            if take.shape[1] > 1024 and rows.shape[1] > take.shape[1]:
                # Spread the sample over the whole tensor, not its first rows.
                step = rows.shape[1] // take.shape[1]
                take = rows[:, ::step][:, : take.shape[1]]
            self._samples.append(take)
            self._count += take.shape[1]

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._range()
        data = torch.cat(self._samples, dim=1)
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for alpha in torch.linspace(self.min_ratio, 1.0, self.n_grid).tolist():
            s, z = calc_qparams(
                lo * alpha, hi * alpha, self.qmin, self.qmax, self.symmetric, self.restricted
            )
            err = ((fake_quantize(data, s, z, self.qmin, self.qmax, axis=0) - data) ** 2).mean(1)
            better = err <= best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo * alpha, best_lo)
            best_hi = torch.where(better, hi * alpha, best_hi)
        return calc_qparams(best_lo, best_hi, self.qmin, self.qmax, self.symmetric, self.restricted)


def make_observer(
    config: IntQuant,
    axis: int | None = None,
    group_size: int | None = None,
    restricted: bool = False,
) -> Observer:
    """The observer named by ``config.observer`` for the config's integer range.

    ``restricted``: symmetric scales put the largest magnitude on ``qmax`` (weights).

    >>> type(make_observer(IntQuant(8, observer="mse"), axis=0)).__name__
    'MSE'
    """
    qmin, qmax = config.qrange
    args = (qmin, qmax, config.symmetric, axis, group_size)
    name = config.observer
    obs: Observer
    if name == "minmax":
        obs = MinMax(*args)
    elif name == "moving_average":
        obs = MovingAverageMinMax(*args)
    elif name == "percentile":
        obs = Percentile(*args, percentile=config.percentile)
    elif name == "mse":
        obs = MSE(*args)
    else:
        obs = Dynamic(*args)
    obs.restricted = restricted
    return obs


def granularity_args(
    granularity: PerTensor | PerChannel | PerGroup,
) -> tuple[int | None, int | None]:
    """``(axis, group_size)`` for a granularity."""
    if isinstance(granularity, PerChannel):
        return granularity.axis, None
    if isinstance(granularity, PerGroup):
        return None, granularity.size
    return None, None
