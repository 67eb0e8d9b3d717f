"""Activation equalization (smoothing) and BatchNorm folding in untraceable models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dfcompress.io as dio
from dfcompress.errors import DfcompressError
from dfcompress.quant import FoldedBatchNorm, IntQuant, PerChannel, PerTensor, QuantLayer, quantize
from dfcompress.quant._equalize import (
    AUTO_ALPHAS,
    auto_factors,
    channel_minmax,
    predicted_errors,
    scale_weight_columns,
    search_factors,
    smoothing_factors,
    weight_column_max,
)
from dfcompress.quant.config import config_from_dict, config_to_dict, resolve_config


def _act8() -> IntQuant:
    return IntQuant(8, PerTensor(), False, "minmax")


@settings(max_examples=40, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_moving_factors_into_the_weights_keeps_the_conv(
    groups: int, per_group_in: int, per_group_out: int, alpha: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    cin, cout = groups * per_group_in, groups * per_group_out
    w = torch.randn(cout, per_group_in, 3, 3, generator=gen)
    x = torch.randn(2, cin, 5, 5, generator=gen) * torch.rand(1, cin, 1, 1, generator=gen) * 10
    lo, hi = channel_minmax(x, 1)
    s = smoothing_factors(torch.maximum(lo.abs(), hi.abs()), weight_column_max(w, groups), alpha)
    assert bool((s > 0).all()) and float(s.max()) == pytest.approx(1.0)
    got = F.conv2d(x / s.reshape(1, -1, 1, 1), scale_weight_columns(w, s, groups), groups=groups)
    want = F.conv2d(x, w, groups=groups)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_dead_channels_get_factor_one_before_normalising() -> None:
    s = smoothing_factors(torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.0]), 1.0)
    assert torch.isfinite(s).all() and float(s[0]) == pytest.approx(float(s[1]) / 4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing": 1.5, "activations": _act8()}, "smoothing=1.5 is out of range"),
        ({"smoothing": "best", "activations": _act8()}, "use a number in \\[0, 1\\] or 'auto'"),
        ({"smoothing": 0.5}, "needs activations"),
        (
            {"smoothing": 0.5, "activations": IntQuant(8, PerTensor(), observer="mse")},
            "observer='minmax'",
        ),
    ],
)
def test_smoothing_is_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        IntQuant(8, **kwargs)  # type: ignore[arg-type]


class _Outlier(nn.Module):
    """A linear layer whose input has one channel 200x wider than the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = torch.ones(16)
        gain[3] = 200.0
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x * gain)))
        return out


def test_equalization_cuts_the_error_of_per_tensor_activations() -> None:
    torch.manual_seed(0)
    net = _Outlier().eval()
    x = torch.randn(256, 16)

    def err(smoothing: float | None) -> float:
        cfg = IntQuant(8, PerChannel(0), True, "minmax", _act8(), smoothing=smoothing)
        q = quantize(net, cfg, calibration=x, progress=False)
        with torch.no_grad():
            return float((q(x) - net(x)).pow(2).mean() / net(x).var())

    assert err(0.8) < 0.5 * err(None)


def test_equalized_layer_computes_the_float_function_without_its_quantizers() -> None:
    torch.manual_seed(1)
    net = _Outlier().eval()
    x = torch.randn(64, 16)
    # bias correction would change the function itself: this is about equalization
    q = quantize(net, "int8", calibration=x, bias_correction=False, progress=False)
    for m in q.modules():
        if isinstance(m, QuantLayer):
            assert m.input_smoothing is not None and not torch.equal(
                m.input_smoothing, torch.ones_like(m.input_smoothing)
            )
            m.input_quant.mode = "off"  # type: ignore[union-attr]
            m.weight_quant.mode = "off"
    with torch.no_grad():
        assert torch.allclose(q(x), net(x), rtol=1e-4, atol=1e-4)


class _BNAct(nn.BatchNorm2d):
    """BatchNorm followed by an activation, like timm's BatchNormAct2d."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.drop(super().forward(x)))
        return out


class _Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; conv -> BN+act pairs must still fold."""

    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = _BNAct(8)
        self.head = nn.Linear(8, 2)
        self.reuse = reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x / 2
        y = self.conv(x)
        z = self.bn(y)
        if self.reuse:  # the conv output is read again: folding would change this
            z = z + y
        out: torch.Tensor = self.head(z.mean((2, 3)))
        return out


def _randomized(net: nn.Module) -> nn.Module:
    torch.manual_seed(2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return net.eval()


def test_batchnorm_with_activation_folds_in_an_untraceable_model() -> None:
    net = _randomized(_Untraceable())
    x = torch.randn(4, 3, 8, 8)
    q = quantize(net, "int8-weight", progress=False)
    assert isinstance(q.bn, FoldedBatchNorm) and isinstance(q.bn.act, nn.SiLU)
    with torch.no_grad():
        assert torch.allclose(q(x), net(x), atol=0.02)
    names = {k.split("::")[0] for k in dio.serialize(q)[0]}
    assert not any("running_mean" in n for n in names)


def test_fold_is_undone_when_the_conv_output_is_read_elsewhere() -> None:
    net = _randomized(_Untraceable(reuse=True))
    x = torch.randn(4, 3, 8, 8)
    q = quantize(net, "int8-weight", progress=False)
    assert isinstance(q.bn, _BNAct)
    with torch.no_grad():
        assert torch.allclose(q(x), net(x), atol=0.02)


def test_folded_batchnorm_rebuilds_its_activation() -> None:
    fb = FoldedBatchNorm(nn.LeakyReLU(0.2))
    back = FoldedBatchNorm.dfc_from_spec(fb.dfc_spec())
    x = torch.linspace(-2, 2, 9)
    assert torch.equal(back(x), fb(x)) and torch.equal(FoldedBatchNorm()(x), x)


def test_packed_weight_scales_are_float16_and_shrink_the_file() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, 1)).eval()
    q = quantize(net, "int8-weight", progress=False, pack=True)
    assert all(
        m.weight_scale.dtype == torch.float16 for m in q.modules() if isinstance(m, QuantLayer)
    )
    plain = quantize(net, "int8-weight", progress=False)
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        assert torch.equal(q(x), plain(x))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.integers(1, 8))
def test_fused_division_matches_dividing_first(seed: int, channels: int) -> None:
    from dfcompress.quant import FakeQuantizer

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, 4, 4, generator=gen) * 5
    d = (torch.rand(1, channels, 1, 1, generator=gen) + 0.05).to(torch.float16).float()
    fq = FakeQuantizer(_act8(), ())
    fq.mode = "observe"
    fq(x / d)
    fq.freeze()
    with torch.no_grad():
        fused = fq.quantize_divided(x, d)
        plain = fq(x / d)
    # Equal but for a product rounded on the other side of a tie: one step at most.
    assert float((fused - plain).abs().max()) <= float(fq.scale) * 1.0001
    assert float((fused != plain).float().mean()) < 0.05


def _conv_case(
    seed: int, groups: int, spread: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    gen = torch.Generator().manual_seed(seed)
    cin, cout = 4 * groups, 2 * groups
    gain = torch.exp(torch.rand(cin, generator=gen) * spread).reshape(1, cin, 1, 1)
    x = torch.randn(8, cin, 6, 6, generator=gen) * gain
    w = torch.randn(cout, cin // groups, 3, 3, generator=gen)
    lo, hi = channel_minmax(x, 1)
    return x, w, lo, hi, {"groups": groups, "padding": 1}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([1, 2]), spread=st.floats(0.0, 6.0))
def test_searched_strength_is_never_worse_than_none_or_the_fixed_one(
    seed: int, groups: int, spread: float
) -> None:
    x, w, lo, hi, kw = _conv_case(seed, groups, spread)

    def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, b, None, **kw)

    s, alpha, errs = search_factors(x, w, lo, hi, fwd, dim=1, groups=groups)
    assert alpha in AUTO_ALPHAS and len(errs) == len(AUTO_ALPHAS)
    chosen = errs[AUTO_ALPHAS.index(alpha)]
    for fixed in (0.0, 0.8):
        _, _, (err_fixed,) = search_factors(x, w, lo, hi, fwd, dim=1, groups=groups, alphas=[fixed])
        assert chosen <= err_fixed
    # The chosen factors still leave the float layer unchanged.
    moved = fwd(x / s.reshape(1, -1, 1, 1), scale_weight_columns(w, s, groups))
    assert torch.allclose(moved, fwd(x, w), rtol=1e-4, atol=1e-4 * float(fwd(x, w).abs().max()))


def test_search_moves_an_outlier_channel_into_the_weights() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    x[:, 3] *= 200.0
    w = torch.randn(8, 16)
    lo, hi = channel_minmax(x, 1)
    _, alpha, errs = search_factors(x, w, lo, hi, lambda a, b: a @ b.T, dim=1)
    assert alpha > 0.0
    assert min(errs) < 0.2 * errs[AUTO_ALPHAS.index(0.0)]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([1, 4]), spread=st.floats(0.0, 6.0))
def test_predicted_error_follows_the_measured_one(seed: int, groups: int, spread: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    cin = 8 * groups
    x = torch.randn(32, cin, 5, 5, generator=gen)
    x = x * torch.exp(torch.rand(cin, generator=gen) * spread).reshape(1, cin, 1, 1)
    w = torch.randn(2 * groups, cin // groups, 1, 1, generator=gen)
    lo, hi = channel_minmax(x, 1)

    def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, b, None, groups=groups)

    _, _, measured = search_factors(x, w, lo, hi, fwd, dim=1, groups=groups)
    x_sq = x.pow(2).mean(dim=(0, 2, 3))
    predicted = predicted_errors(x_sq, w, lo, hi, groups=groups)
    for p, m in zip(predicted, measured, strict=True):
        assert 0.6 * m <= p <= 1.6 * m
    # The predicted choice is close to the best measured one.
    _, alpha = auto_factors(x_sq, w, lo, hi, groups=groups)
    assert measured[AUTO_ALPHAS.index(alpha)] <= 1.3 * min(measured)


def test_auto_strength_cuts_the_error_like_a_fixed_one_and_is_stored() -> None:
    torch.manual_seed(0)
    net = _Outlier().eval()
    x = torch.randn(256, 16)

    def quantized(smoothing: float | str | None) -> nn.Module:
        cfg = IntQuant(8, PerChannel(0), True, "minmax", _act8(), smoothing=smoothing)  # type: ignore[arg-type]
        return quantize(net, cfg, calibration=x, progress=False)

    def err(q: nn.Module) -> float:
        with torch.no_grad():
            return float((q(x) - net(x)).pow(2).mean() / net(x).var())

    auto = quantized("auto")
    assert err(auto) < 0.5 * err(quantized(None))
    assert err(auto) <= 1.5 * err(quantized(0.8))
    cfg = resolve_config("int8")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_named_int8_keeps_a_fixed_strength_and_auto_is_opt_in() -> None:
    cfg = resolve_config("int8")
    assert isinstance(cfg, IntQuant) and cfg.smoothing == 0.8
    auto = dataclasses.replace(cfg, smoothing="auto")
    assert config_from_dict(config_to_dict(auto)) == auto
