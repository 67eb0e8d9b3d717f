"""Fake-quant ops: agreement with PyTorch, error bounds, idempotence, STE gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dfcompress.errors import DfcompressError
from dfcompress.quant.functional import (
    calc_qparams,
    dequantize,
    fake_quantize,
    int_range,
    quantize,
)
from strategies import shapes, tensors

SCALES = st.floats(min_value=2**-13, max_value=10.0, allow_nan=False, width=32)
RANGES = st.sampled_from([(-128, 127), (0, 255), (-127, 127), (0, 127)])


def _at_ties(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Half the values moved onto exact half-steps, where rounding conventions differ."""
    ties = (torch.round(x / scale) + 0.5) * scale
    out = x.clone()
    out.view(-1)[::2] = ties.view(-1)[::2]
    return out


@given(x=tensors(), scale=SCALES, zp=st.integers(-20, 20), rng=RANGES)
def test_per_tensor_equals_torch(
    x: torch.Tensor, scale: float, zp: int, rng: tuple[int, int]
) -> None:
    qmin, qmax = rng
    zp = min(max(zp, qmin), qmax)
    x = _at_ties(x, scale)
    s, z = torch.tensor(scale), torch.tensor(zp, dtype=torch.int32)
    ours = fake_quantize(x, s, z, qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax)
    assert torch.equal(ours, ref)


@given(data=st.data(), rng=RANGES)
def test_per_channel_equals_torch_on_any_axis(data: st.DataObject, rng: tuple[int, int]) -> None:
    qmin, qmax = rng
    x = data.draw(tensors())
    axis = data.draw(st.integers(0, x.dim() - 1))
    c = x.shape[axis]
    scale = torch.tensor(data.draw(st.lists(SCALES, min_size=c, max_size=c)))
    zp = torch.tensor(
        data.draw(st.lists(st.integers(qmin, min(qmax, qmin + 40)), min_size=c, max_size=c)),
        dtype=torch.int32,
    )
    ours = fake_quantize(x, scale, zp, qmin, qmax, axis=axis)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    assert torch.equal(ours, ref)


@given(x=tensors(edge=False), scale=SCALES, bits=st.integers(2, 16))
def test_error_within_half_step_inside_range(x: torch.Tensor, scale: float, bits: int) -> None:
    qmin, qmax = int_range(bits, signed=True)
    s = torch.tensor(scale)
    y = fake_quantize(x, s, torch.tensor(0), qmin, qmax)
    inside = (x >= qmin * scale) & (x <= qmax * scale)
    err = (y - x).abs()[inside]
    assert bool((err <= scale / 2 * (1 + 1e-5) + 1e-6).all())


@given(x=tensors(), scale=SCALES, bits=st.integers(2, 16), signed=st.booleans())
def test_idempotent(x: torch.Tensor, scale: float, bits: int, signed: bool) -> None:
    qmin, qmax = int_range(bits, signed)
    s, z = torch.tensor(scale), torch.tensor((qmin + qmax + 1) // 2)
    once = fake_quantize(x, s, z, qmin, qmax)
    assert torch.equal(fake_quantize(once, s, z, qmin, qmax), once)


def test_ste_gradient_is_one_inside_zero_outside() -> None:
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0), -8, 7)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    inside = (x.detach() >= -0.8 - 0.05) & (x.detach() <= 0.7 + 0.05)
    assert torch.equal(x.grad, inside.float())


@given(data=st.data())
def test_per_group_matches_per_channel_of_each_group(data: st.DataObject) -> None:
    out_c = data.draw(st.integers(1, 4))
    g = data.draw(st.sampled_from([1, 2, 4]))
    n_groups = data.draw(st.integers(1, 3))
    w = data.draw(tensors((out_c, g * n_groups, 3)))
    scale = torch.tensor(
        data.draw(st.lists(SCALES, min_size=out_c * n_groups, max_size=out_c * n_groups))
    ).reshape(out_c, n_groups)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    y = fake_quantize(w, scale, zp, -8, 7, group_size=g)
    for j in range(n_groups):
        block = w[:, j * g : (j + 1) * g]
        ref = fake_quantize(block, scale[:, j], zp[:, j], -8, 7, axis=0)
        assert torch.equal(y[:, j * g : (j + 1) * g], ref)


@given(x=tensors(), scale=SCALES, rng=RANGES)
def test_quantize_dequantize_equals_fake_quantize(
    x: torch.Tensor, scale: float, rng: tuple[int, int]
) -> None:
    qmin, qmax = rng
    s, z = torch.tensor(scale), torch.tensor((qmin + qmax + 1) // 2)
    q = quantize(x, s, z, qmin, qmax)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    assert torch.equal(dequantize(q, s, z), fake_quantize(x, s, z, qmin, qmax))


@given(lo=st.floats(-1e3, 1e3), span=st.floats(0, 1e3), symmetric=st.booleans())
def test_qparams_cover_the_range_and_never_zero_scale(
    lo: float, span: float, symmetric: bool
) -> None:
    qmin, qmax = (-128, 127) if symmetric else (0, 255)
    s, z = calc_qparams(torch.tensor(lo), torch.tensor(lo + span), qmin, qmax, symmetric)
    assert float(s) > 0
    assert qmin <= int(z) <= qmax
    ends = torch.tensor([min(lo, 0.0), max(lo + span, 0.0)])
    err = (fake_quantize(ends, s, z, qmin, qmax) - ends).abs()
    assert bool((err <= float(s) * 1.01 + 1e-6).all())


def test_bad_inputs_raise() -> None:
    with pytest.raises(DfcompressError, match="NaN or Inf"):
        calc_qparams(torch.tensor(float("nan")), torch.tensor(1.0), 0, 255, False)
    with pytest.raises(DfcompressError, match="bits=1"):
        int_range(1, True)
    with pytest.raises(DfcompressError, match="group_size=3"):
        fake_quantize(torch.ones(2, 4), torch.ones(2, 1), torch.zeros(2, 1), -8, 7, group_size=3)


@given(data=st.data(), symmetric=st.booleans())
def test_inference_path_of_the_module_equals_torch(data: st.DataObject, symmetric: bool) -> None:
    from dfcompress.quant.config import IntQuant, PerChannel, PerTensor
    from dfcompress.quant.fake_quantizer import FakeQuantizer

    x = data.draw(tensors(data.draw(shapes(min_dims=2, max_dims=4))))
    per_channel = data.draw(st.booleans())
    cfg = IntQuant(8, PerChannel(0) if per_channel else PerTensor(), symmetric=symmetric)
    fq = FakeQuantizer(cfg, (x.shape[0],) if per_channel else (), 0 if per_channel else None)
    fq.mode = "observe"
    fq(x)
    fq.freeze()
    z = fq.zero_point_int32()
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(x, fq.scale, z, 0, fq.qmin, fq.qmax)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x, fq.scale, z, fq.qmin, fq.qmax)
    with torch.no_grad():
        assert torch.equal(fq(x), ref)
