"""The eager form of ONNX Runtime's int8 arithmetic: the config and the quantize step.

ONNX Runtime (CPU) runs a QDQ file as follows, and the eager model computes the same:

* activations: uint8 per tensor (asymmetric), calibrated min/max at every
  quantized layer's input;
* weights: symmetric per output channel, **7-bit codes** (-64..63) stored as int8:
  ONNX Runtime's fastest x86 kernels (U8S8) add pairs of uint8 x int8 products in
  16-bit registers on CPUs without VNNI and saturate when full-range weights meet
  large activations; 255 * 64 * 2 < 32767, so 7-bit weights never saturate and
  compute the same on every CPU (uint8 weights would too, at 1.15-1.5x the time);
* every int8 convolution (QLinearConv) rounds its output to uint8 with a
  calibrated range (``IntQuant(outputs=...)``), before any activation;
* the operators between convolutions (SiLU's and squeeze-excitation's Sigmoid and
  Mul, residual Add, average pooling) read int8 codes and round their outputs to
  uint8 with calibrated ranges, as QLinearSigmoid, QLinearMul, QLinearAdd and
  QLinearGlobalAveragePool do (:mod:`dfcompress.deploy._onnx_elementwise`);
* linear layers (QGemm / MatMulIntegerToFloat) return float;
* a binary convolution reading sign codes runs as an int8 convolution too: the
  BatchNorm after it is folded into its weight scales, its bias added as int32
  codes and its output rounded to uint8 (:func:`int8_binary_convs`);
* a convolution whose output goes straight into the next quantized layer writes
  that layer's input codes (the exporter drops the output's own Q/DQ pair, so
  the tensor is rounded once): its output range is the next layer's input range;
* in a network with binary convolutions, the stem convolution stays float unless
  ``select`` says otherwise (:func:`binary_stem_rules`): its uint8 output starts
  the residual stream that the sign activations read.

No activation equalization: its factors would be float ``Div`` nodes in the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dfcompress.deploy._bias_grid import on_int32_grid
from dfcompress.deploy._targets import TARGET_ATTR
from dfcompress.errors import DfcompressError
from dfcompress.quant.config import (
    UINT8_ACTIVATIONS,
    UINT8_OUTPUTS,
    IntQuant,
    PerChannel,
    PerTensor,
    resolve_config,
)
from dfcompress.select import SelectorLike

__all__ = [
    "WEIGHT_BITS",
    "binary_stem_rules",
    "int8_binary_convs",
    "onnx_config",
    "quantize",
    "snap_biases",
]

TARGET = "onnxruntime"

WEIGHT_BITS = 7
"""Weight code width: 7-bit codes cannot saturate ONNX Runtime's U8S8 kernels."""


#: Input and output ranges of the named ``"int8"`` / ``"int8-onnx"`` configs: the
#: 99.99th percentile, as on the XNNPACK target. ImageNet MobileNetV2's ONNX Runtime
#: file (300 photo crops, 64 to calibrate, bias correction), top-1 agreement with the
#: float model / KL: percentile inputs and outputs 0.833 / 0.070, percentile inputs
#: with MSE outputs 0.817 / 0.076, min/max inputs with MSE outputs (the earlier
#: default) 0.767 / 0.134, MSE inputs and outputs 0.773 / 0.091.
NAMED_RANGES = IntQuant(8, PerTensor(), False, "percentile")

#: Output ranges of the operators between convolutions (sigmoids, products, sums,
#: average pools) for the named configs: the MSE-optimal range of each. The trained
#: EfficientNet-B0 baseline's ONNX Runtime file (float AUC 0.9886; 256 calibration
#: images): MSE ranges 0.9905, min/max 0.9892, 99.99th percentile 0.9880; sigmoids
#: given the fixed range [0, 1] instead of their observed one: 0.9901 with MSE.
#: BNext (float 0.9292): MSE 0.9287, percentile with sigmoids in [0, 1] 0.9278.
NAMED_ELEMENTWISE = IntQuant(8, PerTensor(), False, "mse")


def onnx_config(config: Any) -> IntQuant:
    """The target's config from ``"int8"``, ``"int8-onnx"`` or an 8-bit :class:`IntQuant`.

    Weights become 7-bit symmetric per output channel, activations uint8 per tensor,
    convolution outputs rounded as QLinearConv rounds them, without equalization.
    The named configs range inputs and outputs at the 99.99th percentile
    (:data:`NAMED_RANGES`); the activation and output observers of a given
    :class:`IntQuant` are kept.
    """
    if isinstance(config, str) and config.lower() not in ("int8", "int8-onnx"):
        raise DfcompressError(
            f"config={config!r} has no ONNX Runtime int8 form: use 'int8', 'int8-onnx' "
            "or an 8-bit IntQuant (export 16-bit models to 'onnxruntime' without a target)"
        )
    cfg = resolve_config(config) if isinstance(config, (str, IntQuant)) else None
    if not isinstance(cfg, IntQuant) or cfg.bits != 8:
        raise DfcompressError(
            f"config={config!r} has no ONNX Runtime int8 form: use 'int8', 'int8-onnx' "
            "or IntQuant(bits=8, ...)"
        )
    if isinstance(config, str):
        # the named configs: the ranges measured best on a pretrained network
        acts = outs = NAMED_RANGES
    else:
        acts = cfg.activations or UINT8_ACTIVATIONS
        outs = cfg.outputs or UINT8_OUTPUTS
    acts = dataclasses.replace(acts, bits=8, symmetric=False)
    outs = dataclasses.replace(outs, bits=8, symmetric=False)
    return IntQuant(
        WEIGHT_BITS,
        PerChannel(0),
        True,
        cfg.observer,
        acts,
        cfg.percentile,
        smoothing=None,
        outputs=outs,
    )


def quantize(
    model: nn.Module,
    config: Any,
    calibration: Iterable[Any] | torch.Tensor | None,
    *,
    select: SelectorLike | None = None,
    progress: bool = True,
    max_samples: int = 256,
    input_shape: Sequence[int] | None = None,
    bias_correction: bool | None = None,
    finetune: Callable[[nn.Module, int], None] | None = None,
    rounding: str = "nearest",
) -> nn.Module:
    """An eager model computing what ONNX Runtime computes from its exported file.

    See the module docstring for the arithmetic; the other arguments are those of
    :func:`dfcompress.quantize`. The model carries ``dfc_target = "onnxruntime"``,
    so :func:`dfcompress.export` writes it for ONNX Runtime with the matching options.
    """
    from dfcompress._calibration import calibration_inputs
    from dfcompress._datafree import default_input_shape
    from dfcompress._validate import check_int, check_model, check_shape
    from dfcompress.quant.api import quantize as quantize_eager

    check_model(model)
    cfg = onnx_config(config)
    check_int(max_samples, "max_samples", low=1)
    data = calibration_inputs(calibration, limit=max_samples)  # read once, used twice
    if data:
        probe = data[0][:1]
    else:
        shape = default_input_shape(model) if input_shape is None else input_shape
        probe = torch.zeros(1, *check_shape(shape, "input_shape"))
    rules = binary_stem_rules(model, cfg) if select is None else None
    made = quantize_eager(
        model,
        cfg if rules is None else rules,
        data,
        select,
        progress=progress,
        max_samples=max_samples,
        input_shape=input_shape,
        # the default rule: off for quantization-aware training, which runs below
        bias_correction=(
            False if bias_correction is None and finetune is not None else bias_correction
        ),
        rounding=rounding,
    )
    if not data:
        from dfcompress._datafree import synthesize_inputs

        data = [synthesize_inputs(model, tuple(probe.shape[1:]), 32)]
    int8_binary_convs(made, probe, data, cfg.outputs or UINT8_OUTPUTS)
    tie_requantization(made, probe)
    snap_biases(made)
    from dfcompress.deploy._onnx_elementwise import round_elementwise

    elementwise = NAMED_ELEMENTWISE if isinstance(config, str) else cfg.outputs or UINT8_OUTPUTS
    round_elementwise(made, data, elementwise, probe)
    if finetune is not None:
        train_as_deployed(made, finetune)
    setattr(made, TARGET_ATTR, TARGET)
    return made


def binary_stem_rules(model: nn.Module, cfg: IntQuant) -> list[tuple[Any, Any]] | None:
    """Rules keeping the stem float in a network with binary convolutions, else None.

    BNext's stem convolution (3x3, no activation after its BatchNorm) starts the
    residual stream whose sign activations feed every binary convolution. Rounded to
    uint8, as QLinearConv rounds its output, it cost the trained BNext baseline's
    ONNX Runtime file 0.0088 AUC (0.9636 -> 0.9548, benchmark test set); kept float,
    0.0022 (0.9614); on 3000 other images -0.0069 and +0.0019. The stem is one
    small convolution on 3 channels: its file ran within 2 % of the all-int8 one.
    Layers marked float here show as ``"kept by a rule"`` in :func:`dfcompress.summary`.
    """
    from dfcompress.models._binary import BinaryConv2d
    from dfcompress.quant.config import Float
    from dfcompress.select import preset

    if not any(isinstance(m, BinaryConv2d) for m in model.modules()):
        return None
    stem = preset("stem")
    if not stem.resolve(model):
        return None
    return [(stem, Float()), (preset("all"), cfg)]


def train_as_deployed(made: nn.Module, finetune: Callable[[nn.Module, int], None]) -> None:
    """Quantization-aware training of the finished target model: ``finetune(made, 0)``.

    QAT trains the model the file computes: every rounding the steps above add
    (the binary convolutions' int8 outputs, the tied requantizations, the rounded
    elementwise operators) is in its forward, with the calibrated ranges and
    weight scales kept fixed; BatchNorm stays in eval mode and the latent binary
    weights do not train (:func:`dfcompress.quant.api.frozen_for_qat`). Trained
    before those steps, as it was, the model the steps then changed was not the
    one trained: on the trained BNext, the eager model after a quarter epoch
    of distillation (lr 1e-4) and the returned one differed by 0.69 in their mean logit.
    The biases go back onto the int32 grid afterwards.
    """
    from dfcompress.quant.api import frozen_for_qat

    with frozen_for_qat(made):
        finetune(made, 0)
    made.eval()
    snap_biases(made)


@torch.no_grad()
def snap_biases(model: nn.Module) -> int:
    """Put each int8 layer's bias on the int32 grid ONNX Runtime adds it on.

    QLinearConv and QGemm take the bias as int32 codes of step ``s_x * s_w`` (input
    scale times each channel's weight scale), and the exporter writes it so. The
    eager model's float bias is moved to the nearest such code, so both add the
    same bias. The rounding is at most half a step of the accumulator: up to 5 % of
    an output code on a pretrained depthwise convolution, whose weight scales are
    large, enough to move one output in twenty by a code and, on MobileNetV2, to
    change a fifth of the top-1 decisions between the eager model and its file.
    Returns the number of biases moved onto the grid.
    """
    from dfcompress.quant.modules import QuantLayer

    done = 0
    for m in model.modules():
        if not isinstance(m, QuantLayer) or m.bias is None or m.input_quant is None:
            continue
        s_x = m.input_quant.scale.detach().float().reshape(())
        s_w = m.weight_quant.scale.detach().float().reshape(-1)
        bias = m.bias.detach()
        if s_w.numel() not in (1, bias.numel()):
            continue
        # the float32 step, as the exporter computes it
        m.bias.copy_(on_int32_grid(bias, s_x * s_w))
        done += 1
    return done


@torch.no_grad()
def int8_binary_convs(
    model: nn.Module,
    probe: torch.Tensor,
    data: Sequence[torch.Tensor],
    outputs_config: IntQuant,
) -> int:
    """Make each binary convolution that reads sign codes compute what its int8 kernel does.

    The exporter writes such a convolution as QLinearConv: sign codes times int8
    codes {-1, +1}, the following BatchNorm folded into the weight scales, the bias
    as int32 codes, the output rounded to uint8 with a range observed on the
    calibration data. Kept float in the eager model, its output was not rounded
    and its bias not snapped, and the trained BNext's eager model and file
    disagreed on 7 % of their decisions. Each such convolution becomes an
    :class:`~dfcompress.models.Int8BinaryConv2d` (its BatchNorm an
    identity), whose output quantizer (``outputs_config``) is calibrated here on
    ``data`` through the quantized model. Convolutions called more than once are
    left alone. Returns the number of convolutions replaced.
    """
    from dfcompress.models._binary import BinaryActivation, BinaryConv2d, Int8BinaryConv2d
    from dfcompress.quant._bnfold import FoldedBatchNorm, _set_submodule
    from dfcompress.quant.fake_quantizer import FakeQuantizer

    signs: set[int] = set()  # ids of sign-activation outputs
    outputs: dict[int, str] = {}  # id of a binary conv's output -> the conv's name
    alive: list[torch.Tensor] = []  # ids are only unique while their objects live
    calls: dict[str, int] = {}
    reads_signs: set[str] = set()
    norm_of: dict[str, str] = {}  # binary conv -> the BatchNorm reading its output
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, BinaryActivation):

            def sign_out(mod: nn.Module, args: Any, out: Any) -> None:
                signs.add(id(out))
                alive.append(out)

            hooks.append(m.register_forward_hook(sign_out))
        elif isinstance(m, BinaryConv2d):

            def conv_in(mod: nn.Module, args: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                if args and id(args[0]) in signs:
                    reads_signs.add(name)

            def conv_out(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                outputs[id(out)] = name
                alive.append(out)

            hooks += [m.register_forward_pre_hook(conv_in), m.register_forward_hook(conv_out)]
        elif type(m) is nn.BatchNorm2d:

            def norm_in(mod: nn.Module, args: Any, name: str = name) -> None:
                conv = outputs.get(id(args[0])) if args else None
                if conv is not None:
                    norm_of[conv] = name

            hooks.append(m.register_forward_pre_hook(norm_in))
    if not hooks:
        return 0
    was_training = model.training
    model.eval()
    try:
        model(probe.to(next(iter(model.parameters()), probe).device))
    finally:
        for h in hooks:
            h.remove()
    made: list[FakeQuantizer] = []
    for name in sorted(n for n in reads_signs if calls.get(n) == 1):
        conv = model.get_submodule(name)
        assert isinstance(conv, BinaryConv2d)
        norm_name = norm_of.get(name)
        norm = None if norm_name is None else model.get_submodule(norm_name)
        assert norm is None or isinstance(norm, nn.BatchNorm2d)
        fq = FakeQuantizer(outputs_config, (), mode="observe")
        _set_submodule(model, name, Int8BinaryConv2d.from_binary(conv, norm, fq).to(probe.device))
        if norm_name is not None:
            _set_submodule(model, norm_name, FoldedBatchNorm())
        made.append(fq)
    if made:
        for x in data:
            model(x.to(probe.device))
        for fq in made:
            fq.freeze()
    model.train(was_training)
    return len(made)


def _clamps_low(m: nn.Module) -> bool:
    """ReLU, ReLU6 and Hardtanh(0, ...) modules: the next uint8 quantizer makes them exact."""
    if isinstance(m, nn.Hardtanh):  # ReLU6 is one
        return float(m.min_val) == 0.0
    return isinstance(m, nn.ReLU)


def tie_requantization(model: nn.Module, probe: torch.Tensor) -> int:
    """Give each conv output read directly by a quantized layer that layer's input range.

    "Directly" allows a ReLU, ReLU6 or Hardtanh(0, ...) module in between. The
    exported graph then holds ``Conv -> Q(s2) -> DQ [-> Relu/Clip] -> Q(s2)``, which
    the exporter reduces to ``Conv -> Q(s2)``: one rounding, and the activation is the
    clamp of that QuantizeLinear (its range, calibrated on the activation's output,
    lies inside the activation's). The eager model's two roundings with one scale
    are that same rounding. Layers are found by running ``probe`` (one input) and
    matching the tensor one layer returns with the one the next receives.
    Returns the number of outputs tied.
    """
    from dfcompress.quant.modules import QuantLayer

    made_by: dict[int, tuple[QuantLayer, torch.Tensor]] = {}
    pairs: list[tuple[QuantLayer, QuantLayer]] = []

    def record_output(mod: nn.Module, args: Any, out: Any) -> None:
        if isinstance(mod, QuantLayer) and isinstance(out, torch.Tensor):
            made_by[id(out)] = (mod, out)  # the tensor kept alive: ids are reused

    def record_input(mod: nn.Module, args: Any) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        src = made_by.get(id(x)) if x is not None else None
        if src is not None and src[1] is x and isinstance(mod, QuantLayer):
            pairs.append((src[0], mod))

    def pass_through(mod: nn.Module, args: Any, out: Any) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        src = made_by.get(id(x)) if x is not None else None
        if src is not None and src[1] is x and isinstance(out, torch.Tensor):
            made_by[id(out)] = (src[0], out)

    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    hooks = [m.register_forward_hook(record_output) for m in layers]
    hooks += [m.register_forward_pre_hook(record_input) for m in layers]
    hooks += [m.register_forward_hook(pass_through) for m in model.modules() if _clamps_low(m)]
    try:
        with torch.no_grad():
            model(probe.to(next(iter(model.parameters()), probe).device))
    finally:
        for h in hooks:
            h.remove()
    tied = 0
    for src, dst in pairs:
        out_q, in_q = src.output_quant, dst.input_quant
        if out_q is None or in_q is None or dst.input_smoothing is not None:
            continue
        if out_q.zero_point is None or in_q.zero_point is None:
            continue
        with torch.no_grad():
            out_q.scale.copy_(in_q.scale.reshape(out_q.scale.shape))
            out_q.zero_point.copy_(in_q.zero_point.reshape(out_q.zero_point.shape))
        tied += 1
    return tied
