"""Quantization-aware fine-tuning: ``quantize(..., finetune=...)`` trains the calibrated model."""

from __future__ import annotations

import copy

import pytest
import torch
from _quant_nets import TinyResNet, randomize_bn

import dfcompress
from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerChannel, PerTensor, Quantizer, QuantLayer


def _gap(model: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - teacher(x)).abs().mean())


#: 4-bit weights and 8-bit activations: a quantization error large enough to measure.
COARSE = IntQuant(4, PerChannel(0), True, "minmax", IntQuant(8, PerTensor(), False))


def _setup() -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    teacher = randomize_bn(TinyResNet()).eval()
    train = [torch.randn(16, 3, 16, 16) for _ in range(8)]
    return teacher, train, torch.randn(32, 3, 16, 16)


def test_finetune_brings_the_quantized_model_closer_to_the_float_one() -> None:
    teacher, train, held_out = _setup()
    before = copy.deepcopy(teacher.state_dict())
    ft = dfcompress.distill_finetune(teacher, train, epochs=6, lr=3e-3, alpha=1.0, progress=False)
    # without bias correction: the comparison is training against none
    kw = {"calibration": train, "progress": False, "bias_correction": False}
    ptq = dfcompress.quantize(teacher, COARSE, **kw)
    qat = dfcompress.quantize(teacher, COARSE, finetune=ft, **kw)

    # closer to the float model on inputs it never saw
    assert _gap(qat, teacher, held_out) < 0.8 * _gap(ptq, teacher, held_out)
    # still quantized, with the calibrated activation ranges, frozen and in eval mode
    layers = {n: m for n, m in qat.named_modules() if isinstance(m, QuantLayer)}
    assert len(layers) == sum(isinstance(m, QuantLayer) for m in ptq.modules()) > 0
    # the ranges calibrated before training (weight scales for training: half the code range)
    qz = Quantizer([("all", COARSE)], qat=True)
    calibrated = qz.prepare(teacher)
    qz.calibrate(calibrated, train, progress=False)
    for name, ref in calibrated.named_modules():
        if isinstance(ref, QuantLayer) and ref.input_scale is not None:
            got = layers[name].input_scale
            assert got is not None and torch.equal(got, ref.input_scale)
            assert layers[name].weight_quant.mode == "fixed"
    assert not qat.training
    # the float model is untouched
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fine_tuned_weights_pack_exactly() -> None:
    teacher, train, held_out = _setup()
    qz = Quantizer([("all", COARSE)])
    prepared = qz.prepare(teacher)
    qz.calibrate(prepared, train, progress=False)
    dfcompress.distill(prepared, teacher, train, epochs=2, lr=3e-3, inplace=True, progress=False)
    plain, packed = qz.convert(prepared), qz.convert(prepared, pack=True)
    with torch.no_grad():
        assert torch.equal(packed(held_out), plain(held_out))


def test_finetune_must_be_callable() -> None:
    teacher, train, _ = _setup()
    with pytest.raises(DfcompressError, match="finetune=3"):
        dfcompress.quantize(teacher, "int8", calibration=train, progress=False, finetune=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [None, "onnxruntime"])
def test_qat_keeps_unfolded_batchnorm_statistics(target: str | None) -> None:
    # A BatchNorm after a ReLU folds into no convolution: QAT must not move its statistics.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.BatchNorm2d(8),
        torch.nn.Conv2d(8, 4, 3),
        torch.nn.Flatten(),
    ).eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(0.2, 0.6)
        net[2].running_var.uniform_(0.5, 2.0)
    calib, test = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)

    def finetune(model: torch.nn.Module, step: int) -> None:
        model.train()  # what a training loop does; the batch statistics must not be used
        with torch.no_grad():
            model(calib * 4 + 2)

    kw = {"calibration": calib, "progress": False, "target": target}
    untouched = dfcompress.quantize(net, "int8", finetune=lambda m, s: None, **kw)
    qat = dfcompress.quantize(net, "int8", finetune=finetune, **kw)
    with torch.no_grad():
        torch.testing.assert_close(qat(test), untouched(test))


def test_qat_leaves_binary_weights_alone_and_trains_the_rest() -> None:
    # Binary weights are exact in int8; Adam would move each latent weight by about
    # the learning rate and flip the signs of the small ones.
    from dfcompress.models import BinaryConv2d, BNext

    torch.manual_seed(0)
    net = BNext((8, 16), num_classes=1).eval()
    x = torch.randn(16, 3, 32, 32)
    ft = dfcompress.distill_finetune(net, [x], epochs=2, lr=1e-2, progress=False)
    q = dfcompress.quantize(net, "int8", calibration=x, finetune=ft, progress=False)
    before = [m.weight for m in net.modules() if isinstance(m, BinaryConv2d)]
    after = [m.weight for m in q.modules() if isinstance(m, BinaryConv2d)]
    assert len(after) == len(before) > 0
    for a, b in zip(after, before, strict=True):
        assert a is not None and b is not None
        assert torch.equal(a, b) and a.requires_grad  # untouched, trainable again
    # the BatchNorms after the binary convolutions stay unfolded, and train
    float_norms = dict(net.named_modules())
    kept = [(n, m) for n, m in q.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert kept
    assert any(not torch.equal(m.bias, float_norms[n].bias) for n, m in kept)  # type: ignore[arg-type]


def test_qat_with_fold_bn_false_trains_the_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten()
    ).eval()
    calib = torch.randn(16, 3, 16, 16)

    def finetune(model: torch.nn.Module, step: int) -> None:
        model.train()
        with torch.no_grad():
            model(calib * 4 + 2)

    q = dfcompress.quantize(net, "int8", calibration=calib, fold_bn=False, finetune=finetune)
    bn = q[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert not torch.equal(bn.running_mean, net[1].running_mean)  # type: ignore[arg-type]
