"""Balanced rounding: each filter's sum of codes kept, within a step of nearest, data-free."""

from __future__ import annotations

import pytest
import torch
from _quant_nets import dw_net, flat_region_depthwise, same_scale_layers
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerChannel, PerGroup, quantize
from dfcompress.quant._balanced import balanced_codes
from dfcompress.quant.modules import QuantLayer

_UNITS = arrays(
    "float64",
    st.tuples(st.integers(1, 6), st.integers(1, 12)),
    elements=st.floats(-130, 130, allow_nan=False, width=64),
)


@settings(max_examples=200, deadline=None)
@given(_UNITS)
def test_balanced_codes_keep_each_rows_rounded_sum_within_a_step(units: object) -> None:
    u = torch.as_tensor(units)
    q = balanced_codes(u)
    near = torch.round(u)
    assert torch.equal(q, torch.round(q))  # integers
    assert bool(((q - u).abs() < 1).all())  # each weight one of its two nearest codes
    assert torch.equal(q.sum(1), torch.round(u.sum(1)))
    # the fewest weights moved, each by one code, the way the sum needs
    need = torch.round(u.sum(1)) - near.sum(1)
    assert torch.equal((q != near).sum(1).to(need.dtype), need.abs())
    assert bool(((q - near) * need[:, None] >= 0).all())


def _weights(q: nn.Module) -> list[torch.Tensor]:
    return [m.quantized_weight().detach() for m in q.modules() if isinstance(m, QuantLayer)]


def test_balanced_rounding_keeps_flat_region_responses_without_data() -> None:
    net = nn.Sequential(flat_region_depthwise()).eval()
    cfg = IntQuant(8, PerChannel(0))
    nearest = quantize(net, cfg, progress=False)
    balanced = quantize(net, cfg, rounding="balanced", progress=False)  # no calibration
    w = net[0].weight.detach()
    (wn,), (wb,) = _weights(nearest), _weights(balanced)
    step = w.abs().amax((1, 2, 3)) / 127
    # each filter's sum (its response to a constant input) within half a step
    sum_err_b = (wb - w).sum((1, 2, 3)).abs()
    sum_err_n = (wn - w).sum((1, 2, 3)).abs()
    assert bool((sum_err_b <= 0.5 * step + 1e-6).all())
    assert float(sum_err_b.mean()) < 0.5 * float(sum_err_n.mean())
    x = torch.full((1, 16, 8, 8), 3.0)  # a flat region
    with torch.no_grad():
        ref = net(x)[..., 2:-2, 2:-2]
        e_b = (balanced(x)[..., 2:-2, 2:-2] - ref).abs().mean()
        e_n = (nearest(x)[..., 2:-2, 2:-2] - ref).abs().mean()
    assert e_b < 0.5 * e_n


@pytest.mark.parametrize(
    "cfg", [IntQuant(8, PerChannel(0)), IntQuant(4, PerGroup(16, fallback=PerChannel(0)))]
)
def test_balanced_codes_stay_on_the_grid_pack_and_keep_the_scales(cfg: IntQuant) -> None:
    net = dw_net()
    x = torch.randn(8, 3, 8, 8).abs()
    nearest = quantize(net, cfg, calibration=x, bias_correction=False, progress=False)
    balanced = quantize(
        net, cfg, calibration=x, rounding="balanced", bias_correction=False, progress=False
    )
    packed = quantize(
        net, cfg, calibration=x, rounding="balanced", bias_correction=False, pack=True,
        progress=False,
    )  # fmt: skip
    moved = 0
    for a, b in same_scale_layers(nearest, balanced):
        codes, near = b.int_weight().int(), a.int_weight().int()
        assert int((codes - near).abs().max()) <= 1
        moved += int((codes != near).sum())
    assert moved > 0
    with torch.no_grad():
        torch.testing.assert_close(packed(x), balanced(x), rtol=1e-5, atol=1e-5)


def test_balanced_rounding_is_for_eager_models_only() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(DfcompressError, match="rounding='balanced' cannot be used with target"):
        quantize(dw_net(), "int8", calibration=torch.randn(4, 3, 8, 8), target="onnxruntime",
                 rounding="balanced")  # fmt: skip
    with pytest.raises(DfcompressError, match="'balanced'"):
        quantize(dw_net(), "int8-weight", rounding="balance")


def test_xnnpack_target_names_the_roundings_it_takes() -> None:
    pytest.importorskip("executorch")
    from dfcompress.deploy import xnnpack

    with pytest.raises(DfcompressError, match="'nearest' or 'gptq'"):
        xnnpack.quantize(dw_net(), "int8", torch.randn(4, 3, 8, 8), rounding="balanced")
