"""Scales that keep 8-bit image grids off rounding ties (quant._grid, observers)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfcompress.features import NPR
from dfcompress.quant._grid import WIDEN, grid_of, tie_free_scale
from dfcompress.quant.functional import calc_qparams
from dfcompress.quant.observers import MinMax, Percentile


def _tie_distance(g: float, scale: float, k_max: int) -> float:
    """Smallest distance (in codes) of the points ``k * g``, ``|k| <= k_max``, to a tie."""
    k = torch.arange(-k_max, k_max + 1, dtype=torch.float64)
    codes = k * g / scale
    return float(((codes - codes.floor()) - 0.5).abs().min())


@settings(max_examples=200, deadline=None)
@given(
    g=st.floats(1e-4, 10.0),
    ratio=st.floats(0.01, 300.0),
)
def test_a_tie_free_scale_keeps_every_grid_point_off_the_ties(g: float, ratio: float) -> None:
    scale = g * ratio
    new = tie_free_scale(scale, g)
    # never narrower (nothing more is clipped), and no more than the allowed widening
    assert new >= scale * (1 - 1e-9)
    assert new <= scale * (2.0 if ratio <= 1.0 else 1.0 + WIDEN + 1e-9)
    # new / g is p / q with p odd (or 1 / n): every grid point within the codes'
    # reach is at least 1 / (2p) of a step from a tie. Any q >= 1 / WIDEN meets the
    # widening bound, so the smallest odd p is below (1 / WIDEN + 1) * ratio + 2.
    p = Fraction(new / g).limit_denominator(1000).numerator
    assert p % 2 == 1 and p <= (1 / WIDEN + 1) * ratio + 2
    k_max = math.ceil(256 * new / g)
    assert _tie_distance(g, new, min(k_max, 20000)) > 1 / (2 * p) - 1e-6


def test_the_percentile_scale_of_an_npr_residual_is_moved_to_the_grid() -> None:
    """The trained BNext's first quantizer: (14/15)/255 put 1 in 15 grid points on a tie."""
    g = 1 / 255
    assert _tie_distance(g, g * 14 / 15, 120) < 1e-6
    assert tie_free_scale(g * 14 / 15, g) == g


def _npr_batch(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=gen).float() / 255
    return NPR()(images)


def test_an_observer_of_npr_residuals_gives_codes_without_ties() -> None:
    batches = [_npr_batch(s) for s in range(3)]
    found = grid_of(batches[0])
    assert found is not None and abs(found[0] * 255 - round(found[0] * 255)) < 1e-4
    for obs in (MinMax(-128, 127, False), Percentile(-128, 127, False, percentile=99.0)):
        for x in batches:
            obs.update(x)
        assert obs.grid is not None
        scale, zp = obs.qparams()
        codes = torch.cat([x.flatten() for x in batches]).double() / float(scale) + int(zp)
        assert float(((codes - codes.floor()) - 0.5).abs().min()) > 1e-3
        # the codes still reach the calibrated range (to the zero point's half step)
        old_s, old_z = (float(t) for t in obs._qparams())
        s, z = float(scale), int(zp)
        assert s >= old_s
        assert s * (-128 - z) <= old_s * (-128 - old_z) + s / 2
        assert s * (127 - z) >= old_s * (127 - old_z) - s / 2


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), symmetric=st.booleans())
def test_values_off_any_grid_keep_the_calibrated_scale(seed: int, symmetric: bool) -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed))
    obs = MinMax(-128, 127, symmetric)
    obs.update(x)
    assert obs.grid is None
    expected = calc_qparams(x.min(), x.max(), -128, 127, symmetric)
    assert torch.equal(obs.qparams()[0], expected[0])
    assert torch.equal(obs.qparams()[1], expected[1])


def test_a_few_coincident_values_are_not_taken_for_a_grid() -> None:
    obs = MinMax(-128, 127, False)
    obs.update(torch.tensor([-1.0, 3.0]))  # two levels: no evidence of a grid
    expected = calc_qparams(torch.tensor(-1.0), torch.tensor(3.0), -128, 127, False)
    assert torch.equal(obs.qparams()[0], expected[0])


def test_per_channel_observers_ignore_grids() -> None:
    x = torch.arange(-60.0, 60.0).reshape(4, 30) / 255
    obs = MinMax(-127, 127, True, axis=0)
    obs.update(x)
    expected = calc_qparams(x.amin(1), x.amax(1), -127, 127, True)
    assert torch.equal(obs.qparams()[0], expected[0])
