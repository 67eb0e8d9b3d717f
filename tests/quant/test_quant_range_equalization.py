"""Activation range equalization (``cross_layer_equalization="activations"``).

The depthwise convolutions' inputs get even per-channel ranges, the float model
computes what it computed on its calibration data, and the int8 model's error
drops where a per-tensor input scale starved the narrow channels.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.models import mobilenet_v2
from dfcompress.quant import IntQuant, PerChannel, PerTensor, quantize
from dfcompress.quant._crosslayer import RANGE_CAP, equalize_activation_ranges


def _pretrained_like(seed: int = 0) -> nn.Module:
    """A MobileNetV2 whose BatchNorms give channels ranges 100x apart, as trained ones do."""
    torch.manual_seed(seed)
    net = mobilenet_v2(num_classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_var.copy_(torch.rand(n) * 2 + 0.1)
                m.running_mean.copy_(torch.randn(n) * 0.3)
                m.weight.copy_(torch.logspace(-2, 0, n)[torch.randperm(n)])
                m.bias.copy_(torch.randn(n) * 0.05)
    return net.eval()


def _depthwise(net: nn.Module) -> list[str]:
    return [
        n
        for n, m in net.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]


def _input_maxima(net: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        net.get_submodule(n).register_forward_pre_hook(
            lambda _m, inp, n=n: seen.__setitem__(n, inp[0].abs().amax(dim=(0, 2, 3)))
        )
        for n in names
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def _layers(net: nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_equalization_keeps_the_float_model_and_evens_out_the_depthwise_inputs() -> None:
    net = _pretrained_like()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    dws = _depthwise(net)
    with torch.no_grad():
        before_out = net(x)
    before = _input_maxima(net, x, dws)
    pairs = equalize_activation_ranges(net, x, _layers(net))
    # the stem's and every expansion conv's, each into its block's depthwise conv
    assert len(pairs) == len(dws) == 17
    with torch.no_grad():
        torch.testing.assert_close(net(x), before_out, rtol=1e-5, atol=1e-5)
    after = _input_maxima(net, x, dws)
    for name in dws:
        spread_before = float(before[name].max() / before[name].min())
        spread_after = float(after[name].max() / after[name].min())
        assert spread_before > 20.0
        # every channel is raised to the widest one's range, by at most RANGE_CAP
        assert spread_after <= max(1.0, spread_before / RANGE_CAP) * 1.001


def test_a_channel_that_never_fires_gets_the_largest_factor_and_no_nan() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4)
    ).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 0.0]).expand(4, 2).reshape(4, 2, 1, 1))
        net[0].bias.zero_()  # every channel is input channel 0, BatchNorm then scales it
        net[1].weight.copy_(torch.tensor([1.0, 0.1, 0.01, 1.0]))
        net[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -100.0]))  # channel 3 stays at zero
    x = torch.randn(4, 2, 6, 6)
    ref = net(x).detach()
    assert equalize_activation_ranges(net, x, {"0", "3"}) == [("0", "3")]
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    torch.testing.assert_close(
        net[1].weight / torch.tensor([1.0, 0.1, 0.01, 1.0]),
        torch.tensor([1.0, 10.0, RANGE_CAP, RANGE_CAP]),
        rtol=0.05,
        atol=0,
    )
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def _uneven_block() -> nn.Module:
    """Conv/BN/ReLU6 into a depthwise conv, its channels' ranges 1000x apart."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.logspace(-3, 0, 16))
        net[1].bias.zero_()
        net[4].weight.copy_(1.0 / torch.logspace(-3, 0, 16))  # the narrow channels matter
    return net.eval()


INT8_NO_SMOOTHING = IntQuant(8, PerChannel(0), True, "minmax", IntQuant(8, PerTensor(), False))


def _error(q: nn.Module, net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((q(x) - net(x)).pow(2).mean() / net(x).var())


def test_equalized_int8_makes_a_fraction_of_the_error_and_leaves_the_callers_model() -> None:
    net = _uneven_block()
    calib = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    held_out = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    state = copy.deepcopy(net.state_dict())
    kw = {"calibration": calib, "progress": False}
    plain = quantize(net, INT8_NO_SMOOTHING, **kw)  # type: ignore[arg-type]
    equalized = quantize(
        net,
        INT8_NO_SMOOTHING,
        cross_layer_equalization="activations",
        **kw,  # type: ignore[arg-type]
    )
    assert _error(equalized, net, held_out) < _error(plain, net, held_out) / 3
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_the_xnnpack_target_takes_it_and_gains_the_same_way() -> None:
    pytest.importorskip("executorch")
    net = _uneven_block()
    calib = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    held_out = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    kw = {"calibration": calib, "target": "xnnpack"}
    plain = quantize(net, "int8", **kw)  # type: ignore[arg-type]
    equalized = quantize(net, "int8", cross_layer_equalization="activations", **kw)  # type: ignore[arg-type]
    assert _error(equalized, net, held_out) < _error(plain, net, held_out) / 3


def test_equalization_by_weight_ranges_is_still_refused_for_a_target() -> None:
    with pytest.raises(DfcompressError, match="'activations' is available"):
        quantize(
            _uneven_block(),
            "int8",
            calibration=torch.randn(2, 3, 8, 8),
            target="xnnpack",
            cross_layer_equalization=True,
        )


def test_activations_needs_calibration_data() -> None:
    with pytest.raises(DfcompressError, match="pass calibration="):
        quantize(_uneven_block(), "int8", progress=False, cross_layer_equalization="activations")


@settings(max_examples=25, deadline=None)
@given(
    st.one_of(
        st.text(max_size=12).filter(lambda s: s not in ("weights", "activations")),
        st.integers(),
        st.floats(allow_nan=False),
        st.none(),
    )
)
def test_an_unknown_equalization_is_named_in_the_error(value: object) -> None:
    if value in (0, 1):  # False and True compare equal to these; only the bools are allowed
        value = {0: 0.5, 1: 2}[value]  # type: ignore[index]
    with pytest.raises(DfcompressError, match="cross_layer_equalization=") as err:
        quantize(_uneven_block(), "int8-weight", progress=False, cross_layer_equalization=value)  # type: ignore[arg-type]
    assert repr(value) in str(err.value)
