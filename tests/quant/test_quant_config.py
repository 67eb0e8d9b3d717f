"""Configs and observers: validation messages and range statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from dfcompress.errors import DfcompressError
from dfcompress.presets import ise
from dfcompress.quant.config import (
    FP16,
    IntQuant,
    PerChannel,
    PerGroup,
    PerTensor,
    config_from_dict,
    config_to_dict,
    resolve_config,
)
from dfcompress.quant.functional import fake_quantize
from dfcompress.quant.observers import MSE, MinMax, MovingAverageMinMax, Percentile
from strategies import tensors


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: IntQuant(bits=1), "bits=1"),
        (lambda: IntQuant(bits=17), "bits=17"),
        (lambda: IntQuant(observer="foo"), "observer='foo'"),
        (lambda: PerGroup(0), "size=0"),
        (lambda: IntQuant(activations=IntQuant(8, PerGroup(4))), "PerGroup"),
        (lambda: IntQuant(percentile=20.0), "percentile=20.0"),
        (lambda: FP16(keep="bn"), "keep='bn'"),
        (lambda: resolve_config("int5"), "'int5'"),
        (lambda: ise(8, 3, 8), "se=3"),
    ],
)
def test_bad_configs_name_the_value(make: object, needle: str) -> None:
    with pytest.raises(DfcompressError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("name", ["int8", "int8-weight", "int4", "fp16", "bf16", "float"])
def test_named_configs_round_trip_through_json(name: str) -> None:
    cfg = resolve_config(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_int8_default_is_per_channel_weights_and_per_tensor_uint8_activations() -> None:
    cfg = resolve_config("int8")
    assert isinstance(cfg, IntQuant)
    assert cfg.granularity == PerChannel(0) and cfg.symmetric
    assert cfg.activations is not None and cfg.activations.granularity == PerTensor()
    assert cfg.activations.qrange == (0, 255)


@given(x=tensors((3, 7)))
def test_minmax_scale_covers_every_value(x: torch.Tensor) -> None:
    obs = MinMax(-128, 127, symmetric=True, axis=0)
    obs.update(x)
    s, _ = obs.qparams()
    assert s.shape == (3,) and bool((s > 0).all())
    assert bool((x.abs().amax(1) <= s * 128 * (1 + 1e-6)).all())


def test_constant_tensor_never_gives_zero_scale() -> None:
    for obs in (
        MinMax(0, 255, False),
        MovingAverageMinMax(0, 255, False),
        Percentile(0, 255, False),
        MSE(0, 255, False),
    ):
        obs.update(torch.zeros(10))
        assert float(obs.qparams()[0]) > 0


def test_nan_or_inf_in_calibration_is_an_error() -> None:
    with pytest.raises(DfcompressError, match="NaN or Inf"):
        MinMax(0, 255, False).update(torch.tensor([1.0, float("inf")]))


def test_percentile_clips_an_outlier_that_minmax_keeps() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    x[0] = 1000.0
    mm, pc = MinMax(-128, 127, True), Percentile(-128, 127, True, percentile=99.9)
    mm.update(x)
    pc.update(x)
    assert float(pc.qparams()[0]) < float(mm.qparams()[0]) / 50


def test_mse_range_gives_lower_error_than_minmax_on_heavy_tails() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace samples
    errs = []
    for obs in (MinMax(-8, 7, True), MSE(-8, 7, True)):
        obs.update(x)
        s, z = obs.qparams()
        errs.append(float(((fake_quantize(x, s, z, -8, 7) - x) ** 2).mean()))
    assert errs[1] < 0.8 * errs[0]


def test_moving_average_follows_new_batches_slowly() -> None:
    obs = MovingAverageMinMax(0, 255, False, momentum=0.5)
    obs.update(torch.tensor([0.0, 1.0]))
    obs.update(torch.tensor([0.0, 3.0]))
    assert float(obs.max_val) == pytest.approx(2.0)  # type: ignore[arg-type]
