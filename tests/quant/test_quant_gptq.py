"""GPTQ rounding: lower output error than nearest rounding, codes on the grid, packable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _quant_nets import dw_net, flat_region_depthwise, layer_weight_errors, same_scale_layers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerChannel, PerGroup, PerTensor, quantize
from dfcompress.quant._gptq import gptq_layer, input_gram
from dfcompress.quant.modules import QuantLayer


def _wrapped(layer: nn.Module, config: IntQuant) -> QuantLayer:
    q = quantize(nn.Sequential(layer), config, progress=False)
    inner = q[0]
    assert isinstance(inner, QuantLayer)
    return inner


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_lowers_every_layers_output_error(bits: int) -> None:
    config = IntQuant(bits, PerGroup(16, fallback=PerChannel(0)) if bits == 4 else PerChannel(0))
    net = dw_net()
    x = torch.randn(32, 3, 12, 12).abs()  # positive inputs: a DC component, as after a ReLU
    nearest = quantize(net, config, progress=False)
    gptq = quantize(net, config, calibration=x, rounding="gptq", progress=False)
    near, got = layer_weight_errors(net, nearest, x), layer_weight_errors(net, gptq, x)
    assert set(near) == {"0", "2", "4", "7"}
    for name in near:
        assert got[name] < near[name], (name, got[name], near[name])
    # the whole model moves less too, on inputs it did not see
    held = torch.randn(32, 3, 12, 12).abs()
    with torch.no_grad():
        ref = net(held)
        assert F.mse_loss(gptq(held), ref) < F.mse_loss(nearest(held), ref)


def test_gptq_codes_stay_on_the_grid_and_pack() -> None:
    net = dw_net()
    x = torch.randn(8, 3, 8, 8)
    cfg = IntQuant(4, PerGroup(16, fallback=PerChannel(0)))
    nearest = quantize(net, cfg, progress=False)
    gptq = quantize(net, cfg, calibration=x, rounding="gptq", progress=False)
    packed = quantize(net, cfg, calibration=x, rounding="gptq", progress=False, pack=True)
    changed = 0
    for a, b in same_scale_layers(nearest, gptq):
        codes = b.int_weight().int()
        assert int(codes.min()) >= -8 and int(codes.max()) <= 7
        # the stored float weight is exactly its codes times the scale
        torch.testing.assert_close(b.quantized_weight(), b.weight, rtol=0, atol=1e-6)
        changed += int((codes != a.int_weight().int()).sum())
    assert changed > 0
    with torch.no_grad():
        torch.testing.assert_close(packed(x), gptq(x), rtol=1e-5, atol=1e-5)


def test_gptq_fixes_the_flat_region_error_of_depthwise_filters() -> None:
    conv = flat_region_depthwise()
    layer = _wrapped(conv, IntQuant(8, PerChannel(0)))
    x = 3.0 + 0.1 * torch.randn(16, 16, 10, 10)  # mostly flat, as after ReLU6 on plain regions
    h = input_gram(layer, x)
    assert h.shape == (16, 9, 9)
    e_near, e_kept = gptq_layer(layer, h)
    assert e_kept < 0.5 * e_near, (e_kept, e_near)


def test_input_gram_matches_the_unfolded_convolution() -> None:
    torch.manual_seed(0)
    layer = _wrapped(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), IntQuant(8))
    x = torch.randn(3, 4, 7, 7)
    h = input_gram(layer, x)
    cols = F.unfold(x, 3, padding=1, stride=2)  # (3, 36, L)
    per = cols.reshape(3, 2, 18, -1).permute(1, 2, 0, 3).reshape(2, 18, -1).double()
    torch.testing.assert_close(h, per @ per.transpose(1, 2), rtol=1e-4, atol=1e-4)


def test_gptq_handles_linear_layers_on_token_sequences() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    x = torch.randn(6, 10, 24)  # (batch, tokens, features)
    cfg = IntQuant(4, PerGroup(8, fallback=PerChannel(0)))
    nearest = quantize(net, cfg, progress=False)
    gptq = quantize(net, cfg, calibration=x, rounding="gptq", progress=False)
    with torch.no_grad():
        ref = net(x)
        assert F.mse_loss(gptq(x), ref) < F.mse_loss(nearest(x), ref)


def test_gptq_needs_data() -> None:
    with pytest.raises(DfcompressError, match="rounding='gptq' chooses"):
        quantize(dw_net(), "int8-weight", rounding="gptq", progress=False)


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 6),
    inp=st.integers(1, 12),
    bits=st.sampled_from([2, 3, 4, 8]),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
)
def test_gptq_never_does_worse_than_nearest(
    out: int, inp: int, bits: int, n: int, seed: int, scale: float
) -> None:
    """For any layer and any inputs (rank-deficient, dead columns, tiny or huge values)."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, inp, generator=gen) * scale)
    layer = _wrapped(lin, IntQuant(bits, PerChannel(0)))
    x = torch.randn(n, inp, generator=gen) * scale
    x[:, torch.rand(inp, generator=gen) < 0.2] = 0.0  # dead inputs
    before = layer.weight.detach().clone() if layer.weight is not None else None
    e_near, e_kept = gptq_layer(layer, input_gram(layer, x))
    assert e_kept <= e_near * (1 + 1e-9) + 1e-12
    assert layer.weight is not None and before is not None
    assert torch.isfinite(layer.weight).all()
    codes = layer.int_weight().int()
    lim = 2 ** (bits - 1)
    assert int(codes.min()) >= -lim and int(codes.max()) <= lim - 1
    if not torch.equal(layer.weight, before):  # rounded: every weight lies on the grid
        assert layer.weight_quant.mode == "fixed"
        torch.testing.assert_close(
            layer.quantized_weight(), layer.weight, rtol=1e-6, atol=1e-6 * scale
        )
    else:  # nearest kept: the float weight is left for the usual rounding
        assert e_kept == e_near


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 8)
    ).eval()


@pytest.mark.parametrize(
    "config",
    [
        IntQuant(4, PerChannel(0)),
        IntQuant(4, PerChannel(0), activations=IntQuant(8, PerTensor(), symmetric=False)),
    ],
)
def test_gptq_makes_up_for_the_layers_before(
    config: IntQuant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each layer is rounded towards the float model's output on the inputs the model
    # quantized so far gives it: the last layer's output error (held-out data) falls
    # well below that of rounding each layer for its own error only.
    import dfcompress.quant._sequential as seq

    net, g = _mlp(), torch.Generator().manual_seed(4)
    x, held = torch.randn(512, 16, generator=g), torch.randn(256, 16, generator=g)
    kw = {"calibration": x, "rounding": "gptq", "bias_correction": False, "progress": False}
    fitted = quantize(net, config, **kw)
    monkeypatch.setattr(seq, "compensated_weight", lambda w, c, h: w)
    own = quantize(net, config, **kw)
    with torch.no_grad():
        ref = net(held)
        err_fitted = float((fitted(held) - ref).pow(2).mean())
        err_own = float((own(held) - ref).pow(2).mean())
    assert err_fitted < 0.8 * err_own


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(2, 6),
    st.floats(0.0, 0.5),
    st.integers(0, 2**16),
)
def test_compensated_weight_never_matches_the_float_output_worse(
    groups: int, rows: int, per: int, noise: float, seed: int
) -> None:
    from dfcompress.quant._sequential import compensated_weight

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(groups, rows, per, generator=g, dtype=torch.float64)
    x0 = torch.randn(groups, per, 64, generator=g, dtype=torch.float64)
    x = x0 + noise * torch.randn(groups, per, 64, generator=g, dtype=torch.float64)
    h, c = x @ x.transpose(1, 2), x0 @ x.transpose(1, 2)
    fitted = compensated_weight(w, c, h)

    def err(v: torch.Tensor) -> float:
        return float((w @ x0 - v @ x).pow(2).sum())

    assert err(fitted) <= err(w) * (1 + 1e-9) + 1e-9
    if noise == 0.0:  # the same inputs: nothing to make up for
        torch.testing.assert_close(fitted, w)
