"""Quantizer and quantize() on the network shapes detectors use."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from _quant_nets import TinyResNet, TinyVideoNet, TinyViT, randomize_bn
from torch import nn

from dfcompress import FloatLayersWarning, summary
from dfcompress._rebuild import kind_of
from dfcompress.errors import DfcompressError
from dfcompress.quant import (
    CastLayer,
    FoldedBatchNorm,
    IntQuant,
    PerGroup,
    Quantizer,
    QuantLayer,
    quantize,
)

torch.manual_seed(0)

NETS = {
    "resnet": (TinyResNet, (3, 16, 16)),
    "vit": (TinyViT, (3, 16, 16)),
    "video": (TinyVideoNet, (3, 4, 8, 8)),
}


def _make(name: str) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = NETS[name]
    torch.manual_seed(1)
    return randomize_bn(cls()), torch.randn(16, *shape)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize(
    ("config", "tol"), [("int8", 0.05), ("int4", 0.3), ("fp16", 0.01), ("bf16", 0.05)]
)
def test_quantize_keeps_outputs_close(net: str, config: str, tol: float) -> None:
    model, x = _make(net)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        q = quantize(model, config, calibration=x, progress=False)
        out = q(x)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < tol
    assert any(isinstance(m, (QuantLayer, CastLayer)) for m in q.modules())
    # the caller's model is untouched, bit for bit
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, (QuantLayer, CastLayer)) for m in model.modules())


def test_attention_output_projection_is_left_float() -> None:
    model, x = _make("vit")
    with pytest.warns(FloatLayersWarning, match=r"attn\.out_proj \(read by its parent\)"):
        q = quantize(model, "int8", calibration=x, progress=False)
    assert type(q.attn.out_proj) is type(model.attn.out_proj)
    assert isinstance(q.mlp[0], QuantLayer) and isinstance(q.head, QuantLayer)
    assert summary(q).float_layers == {"attn.out_proj": "read by its parent"}


def test_int8_weights_use_pytorch_fake_quant_exactly() -> None:
    model, x = _make("resnet")
    q = quantize(model, "int8", calibration=x, progress=False)
    layer = q.pw
    assert isinstance(layer, QuantLayer) and layer.bits == 8 and layer.weight is not None
    ref = torch.fake_quantize_per_channel_affine(
        layer.weight, layer.weight_scale, layer.weight_zero_point, 0, -128, 127
    )
    assert torch.equal(layer.quantized_weight(), ref)
    assert layer.input_scale is not None and float(layer.input_scale) > 0
    assert layer.input_zero_point is not None and layer.input_bits == 8


def test_bn_is_folded_for_int8_and_output_matches() -> None:
    model, x = _make("resnet")
    q = Quantizer([("all", "int8-weight")]).prepare(model)
    assert isinstance(q.bn1, FoldedBatchNorm) and isinstance(q.stem[1], FoldedBatchNorm)
    qf = Quantizer([("all", IntQuant(16))]).prepare(model)
    with torch.no_grad():
        assert _rel_err(qf(x), model(x)) < 1e-3


def test_packed_equals_unpacked_and_rebuilds_from_spec() -> None:
    model, x = _make("resnet")
    qz = Quantizer([("all", "int8"), ("head", "int4")])
    prepared = qz.prepare(model)
    qz.calibrate(prepared, x, progress=False)
    plain = qz.convert(prepared)
    packed = qz.convert(prepared, pack=True)
    with torch.no_grad():
        assert torch.equal(plain(x), packed(x))
    for name, m in packed.named_modules():
        if kind_of(m) is None or not isinstance(m, QuantLayer):
            continue
        assert m.weight_packed is not None and m.weight is None
        empty = type(m).dfc_from_spec(m.dfc_spec())
        sd, sd2 = m.state_dict(), empty.state_dict()
        assert {k: (v.shape, v.dtype) for k, v in sd.items()} == {
            k: (v.shape, v.dtype) for k, v in sd2.items()
        }, name
        empty.load_state_dict(sd)
        xin = torch.randn(
            2,
            m.args.get("in_channels", 0) or m.args["in_features"],
            *([4, 4] if m.layer_kind == "conv2d" else []),
        )
        with torch.no_grad():
            assert torch.equal(empty(xin), m(xin))


def test_group_size_not_dividing_names_the_layer() -> None:
    model, _ = _make("resnet")
    with pytest.raises(DfcompressError, match=r"stem\.0"):
        quantize(model, IntQuant(4, PerGroup(32)), progress=False)


def test_convert_before_calibrate_is_an_error() -> None:
    model, _ = _make("resnet")
    qz = Quantizer([("conv", "int8")])
    with pytest.raises(DfcompressError, match="not calibrated"):
        qz.convert(qz.prepare(model))


def test_rules_first_match_wins_and_float_shields() -> None:
    model, x = _make("resnet")
    q = quantize(
        model, [("stem", "float"), ("conv", "int4"), ("all", "int8")], calibration=x, progress=False
    )
    assert type(q.stem[0]) is nn.Conv2d
    assert isinstance(q.conv1, QuantLayer) and q.conv1.bits == 4
    assert isinstance(q.fc, QuantLayer) and q.fc.bits == 8


def test_data_free_calibration_logs_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    model, x = _make("resnet")
    with caplog.at_level(logging.WARNING, logger="dfcompress"):
        q = quantize(model, "int8", input_shape=(3, 16, 16), max_samples=8, progress=False)
    assert "synthesized" in caplog.text
    with torch.no_grad():
        assert _rel_err(q(x), model(x)) < 0.15


def test_data_free_without_batchnorm_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(DfcompressError, match="no BatchNorm"):
        quantize(model, "int8", progress=False)


def test_qat_trains_through_the_straight_through_estimator() -> None:
    model, x = _make("resnet")
    y = torch.randint(0, 2, (16,))
    qz = Quantizer([("all", "int8")], fold_bn=False)
    prepared = qz.prepare(model)
    qz.calibrate(prepared, x, progress=False)
    prepared.train()
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert prepared.conv1.weight.grad is not None and prepared.conv1.weight.grad.abs().sum() > 0


def test_dynamic_observer_follows_weight_changes_and_cannot_pack() -> None:
    lin = nn.Sequential(nn.Linear(8, 4))
    cfg = IntQuant(8, symmetric=False, observer="dynamic")
    q = quantize(lin, cfg, progress=False)
    x = torch.randn(3, 8)
    with torch.no_grad():
        q[0].weight.mul_(2.0)
        assert _rel_err(q(x) - q[0].bias, 2 * (lin(x) - lin[0].bias)) < 0.02
    with pytest.raises(DfcompressError, match="dynamic"):
        Quantizer([("all", cfg)]).convert(q, pack=True)


def test_bias_correction_reduces_mean_output_shift() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8)).eval()
    with torch.no_grad():
        net[0].weight.add_(0.3)
    x = torch.randn(32, 8, 8, 8) + 1.0
    shifts = []
    for bc in (False, True):
        q = quantize(net, IntQuant(3), calibration=x, bias_correction=bc, progress=False)
        with torch.no_grad():
            shifts.append(float((q(x) - net(x)).mean((0, 2, 3)).abs().mean()))
    assert shifts[1] < 0.5 * shifts[0]


def test_bn_reestimation_tracks_the_quantized_activations() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)).eval()
    x = torch.randn(64, 4, 8, 8)
    q = quantize(
        net, IntQuant(3), calibration=x, fold_bn=False, bn_reestimation=True, progress=False
    )
    with torch.no_grad():
        pre = q[0](x)
    assert torch.allclose(q[1].running_mean, pre.mean((0, 2, 3)), atol=1e-4)
    assert not q[1].training and q[1].momentum == net[1].momentum
