"""dfcompress's observers as PT2E observer modules: XNNPACK's int8 codes, never a bad range."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from strategies import tensors

pytest.importorskip("executorch")

from dfcompress.deploy._xnnpack_observers import PT2EObserver, dfc_observer
from dfcompress.errors import DfcompressError


def _fq(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, float(s), int(z), lo, hi)


@given(tensors(edge=False), st.sampled_from(["minmax", "moving_average", "percentile", "mse"]))
def test_activation_range_is_int8_asymmetric_with_zero_exact(x: torch.Tensor, name: str) -> None:
    obs = PT2EObserver(name, quant_min=-128, quant_max=127)
    assert obs(x) is x
    s, z = obs.calculate_qparams()
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    assert float(s) > 0 and -128 <= int(z) <= 127
    zero = torch.zeros(1)
    assert float(_fq(zero, s, z, -128, 127)) == 0.0  # padding and ReLU zeros stay exact


@given(tensors(edge=False))
def test_minmax_range_covers_the_data_within_half_a_step(x: torch.Tensor) -> None:
    obs = PT2EObserver("minmax", quant_min=-128, quant_max=127)
    obs(x)
    s, z = obs.calculate_qparams()
    err = (_fq(x, s, z, -128, 127) - x).abs().max()
    assert float(err) <= float(s) / 2 * (1 + 1e-4) + 1e-6


@given(tensors(edge=False))
def test_mse_range_never_has_more_error_than_minmax(x: torch.Tensor) -> None:
    errs = []
    for name in ("minmax", "mse"):
        obs = PT2EObserver(name, quant_min=-128, quant_max=127)
        obs(x)
        s, z = obs.calculate_qparams()
        errs.append(float(((_fq(x, s, z, -128, 127) - x) ** 2).mean()))
    assert errs[1] <= errs[0] * (1 + 1e-5) + 1e-12


@given(st.integers(1, 6), st.integers(1, 5))
def test_weights_are_symmetric_per_output_channel(out: int, k: int) -> None:
    w = torch.randn(out, 3, k, k, generator=torch.Generator().manual_seed(out * 7 + k))
    obs = PT2EObserver("minmax", qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127)
    obs(w)
    s, z = obs.calculate_qparams()
    assert s.shape == (out,) and bool((z == 0).all())
    torch.testing.assert_close(s, w.abs().amax((1, 2, 3)) / 127)


def test_dynamic_ranges_are_refused() -> None:
    with pytest.raises(DfcompressError, match="observer='dynamic'"):
        dfc_observer("dynamic", -128, 127, False, None)
