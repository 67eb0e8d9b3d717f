"""The ``quantize`` verb: one call from a float model to a quantized one."""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from dfcompress._calibration import calibration_inputs
from dfcompress._datafree import default_input_shape, synthesize_inputs
from dfcompress._summary import warn_float
from dfcompress._validate import check_bool, check_int, check_model, check_shape, has_layers
from dfcompress.errors import DfcompressError
from dfcompress.quant import _layers
from dfcompress.quant.config import Config, IntQuant, Mixed, resolve_config
from dfcompress.quant.modules import QuantLayer
from dfcompress.quant.quantizer import Quantizer, Rule
from dfcompress.select import SelectorLike

__all__ = ["quantize"]

_log = logging.getLogger("dfcompress")


def check_calibration_options(
    max_samples: Any, bias_correction: Any, input_shape: Any, finetune: Any
) -> tuple[int, ...] | None:
    """The checks every quantizing entry point shares; returns ``input_shape`` as a tuple."""
    if bias_correction is not None:
        check_bool(bias_correction, "bias_correction")
    check_int(max_samples, "max_samples", low=1)
    shape = None if input_shape is None else check_shape(input_shape, "input_shape")
    if finetune is not None and not callable(finetune):
        raise DfcompressError(
            f"finetune={finetune!r} is not callable: pass a function (model, step) -> None, "
            "e.g. dfcompress.distill_finetune(model, train_loader, lr=3e-5)"
        )
    return shape


def auto_bias_correction(
    model: nn.Module, layers: Iterable[str], real_data: bool, finetune: object
) -> bool:
    """What ``bias_correction=None`` (the default) means for ``model``.

    On for post-training quantization (no ``finetune``) from real calibration data
    (not synthesized) when one of ``layers``, the layers getting integer weights,
    is a depthwise convolution. Rounding a depthwise filter of a few taps shifts
    its output's mean, and nothing after it averages the shift out: bias
    correction removes it (Nagel et al., 2019). Measured on the deployed files:
    EfficientNet-B0 +0.0004 to +0.0013 AUC on both runtimes and two image sets,
    ImageNet MobileNetV2 0.74 -> 0.81 top-1 agreement; on networks without
    depthwise layers it moved AUC either way by up to 0.0015, so it stays off
    there. Training (``finetune``) adjusts the biases itself.
    """
    from dfcompress.prune._caps import is_depthwise

    if not real_data or finetune is not None:
        return False
    mods = dict(model.named_modules())
    return any(is_depthwise(mods[n]) for n in layers if n in mods)


def _quantizes_inputs(config: Config) -> bool:
    """Whether layers given ``config`` need calibrated activation ranges."""
    if not isinstance(config, IntQuant):
        return False
    return any(
        c is not None and c.observer != "dynamic" for c in (config.activations, config.outputs)
    )


def _needs_calibration(model: nn.Module) -> bool:
    return any(
        isinstance(m, QuantLayer) and m.input_quant is not None and m.input_quant.mode == "off"
        for m in model.modules()
    )


def _weight_count(layer: nn.Module) -> int:
    w = layer.weight
    return int(w.numel()) if isinstance(w, torch.Tensor) else 0


def _packed_size(model: nn.Module, rules: list[Rule], fold_bn: bool) -> int:
    """Bytes of ``model``'s packed file with weight-only ``rules`` (nothing calibrated)."""
    from dfcompress.io import serialized_size

    qz = Quantizer(rules, fold_bn=fold_bn)
    qz.warn = False
    made = qz.convert(qz.prepare(model, inplace=False), pack=True)
    return serialized_size(made)


def _mixed_rules(
    model: nn.Module,
    calibration: Iterable[Any] | torch.Tensor | None,
    select: SelectorLike | None,
    input_shape: Sequence[int] | None,
    spec: Mixed,
    fold_bn: bool,
) -> list[Rule]:
    """Mixed precision: ``spec.high`` for the layers a sensitivity scan finds too sensitive
    (and, under a size limit the budget's plan overruns, ``spec.low``'s bits in coarser
    groups where those leave the least noise)."""
    from dfcompress.io import serialized_size
    from dfcompress.quant._mixed import (
        coarser_configs,
        layer_bytes,
        layer_sensitivity,
        mixed_plan,
        sized_plan,
    )
    from dfcompress.select import by_name

    scope: SelectorLike = select if select is not None else "all"
    names = [n for n, c in Quantizer([(scope, spec.high)]).plan(model).items()]
    if calibration is None:
        shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
        calibration = synthesize_inputs(model, shape, 8)
    sizes = {n: _weight_count(model.get_submodule(n)) for n in names}
    chosen: dict[str, IntQuant] = {}
    if spec.max_size is None:
        scores = layer_sensitivity(model, calibration, names, spec.low)
        chosen = dict.fromkeys(mixed_plan(scores, spec.budget, sizes), spec.high)
    else:
        float_bytes = serialized_size(model)
        limit = int(spec.max_size * float_bytes)
        floor = _packed_size(model, [(scope, spec.low)], fold_bn)
        coarser = coarser_configs(spec.low, spec.coarser_groups)
        low_bytes = layer_bytes(model, names, spec.low)
        costs = {
            c: {n: b - low_bytes[n] for n, b in layer_bytes(model, names, c).items()}
            for c in [spec.high, *coarser]
        }
        least = floor + sum(min([0, *(costs[c][n] for c in coarser)]) for n in names)
        if least > limit:
            raise DfcompressError(
                f"max_size={spec.max_size!r} cannot be met: with every layer at its smallest "
                f"config ({spec.low!r}"
                + (f" in groups of up to {max(spec.coarser_groups)}" if coarser else "")
                + f") the file is already {least / float_bytes:.3f} of the float file "
                "(raise max_size, or use a smaller low config)"
            )
        scores = layer_sensitivity(model, calibration, names, spec.low)
        high = mixed_plan(scores, spec.budget, sizes)
        if floor + sum(costs[spec.high][n] for n in high) <= limit:
            chosen = dict.fromkeys(high, spec.high)
        else:  # the least noise within the limit, each layer at one of the configs
            configs = [spec.low, spec.high, *coarser]
            noise = {spec.low: scores, spec.high: dict.fromkeys(names, 0.0)}
            noise |= {c: layer_sensitivity(model, calibration, names, c) for c in coarser}
            plan = sized_plan(
                {
                    n: [(noise[c][n], 0 if c == spec.low else costs[c][n]) for c in configs]
                    for n in names
                },
                limit - floor,
            )
            chosen = {n: configs[j] for n, j in plan.items() if j != 0}
            scores = {n: noise[configs[j]][n] for n, j in plan.items()}
    left = sum(s for n, s in scores.items() if chosen.get(n) != spec.high)
    _log.info(
        "dfcompress: mixed precision keeps %d of %d layers at %d bits, %d in coarser groups "
        "(measured noise left %.4g, budget %g)",
        sum(c == spec.high for c in chosen.values()),
        len(names),
        spec.high.bits,
        sum(c != spec.high for c in chosen.values()),
        left,
        spec.budget,
    )
    rules: list[Rule] = []
    for config in dict.fromkeys(chosen.values()):
        rules.append((by_name(*sorted(n for n, c in chosen.items() if c == config)), config))
    return [*rules, (scope, spec.low)]


def _target_options(target: str, **given: Any) -> None:
    """Refuse the options a runtime target's quantized model cannot honour (any value
    but :func:`quantize`'s default)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(quantize).parameters.items()}
    why = {
        "inplace": "the target's model is a new graph; use the returned model",
        "fold_bn": "the runtime folds BatchNorm into the convolutions before it",
        "bn_reestimation": "BatchNorm is folded into the runtime's convolutions",
        "pack": "the exported file stores the integer weights itself",
        "rounding": "the target's weights are rounded to nearest or with 'gptq'",
        "cross_layer_equalization": "the weight-range form would put a per-channel clamp in "
        "the graph; 'activations' is available",
    }
    for key, value in given.items():
        if key == "rounding" and value == "gptq":
            continue  # chosen in the target's own graph (needs calibration data)
        if key == "cross_layer_equalization" and value == "activations":
            continue  # changes the float weights only
        if value != defaults[key]:
            raise DfcompressError(
                f"{key}={value!r} cannot be used with target={target!r}: {why[key]} "
                f"(leave it at {defaults[key]!r}, or quantize without a target)"
            )


def _check_rounding(rounding: object, calibration: object) -> None:
    from dfcompress.quant.quantizer import DATA_ROUNDINGS, ROUNDINGS

    if rounding not in ROUNDINGS:
        raise DfcompressError(
            f"rounding={rounding!r} is unknown: use one of {', '.join(map(repr, ROUNDINGS))}"
        )
    if rounding in DATA_ROUNDINGS and calibration is None:
        raise DfcompressError(
            f"rounding={rounding!r} chooses each layer's rounding from data: pass calibration= "
            "(a loader or a tensor of inputs), or use rounding='nearest'"
        )


#: The values of ``quantize(cross_layer_equalization=...)``.
EQUALIZATIONS: tuple[object, ...] = (False, True, "weights", "activations")


def _check_equalization(value: object, calibration: object) -> str | None:
    """``"weights"``, ``"activations"`` or None from a ``cross_layer_equalization`` value."""
    if not any(value is v or (isinstance(v, str) and value == v) for v in EQUALIZATIONS):
        raise DfcompressError(
            f"cross_layer_equalization={value!r} is unknown: use one of "
            f"{', '.join(map(repr, EQUALIZATIONS))}"
        )
    if value == "activations" and calibration is None:
        raise DfcompressError(
            "cross_layer_equalization='activations' measures each channel's range on data: "
            "pass calibration= (a loader or a tensor of inputs), or use 'weights'"
        )
    if value is False:
        return None
    return "weights" if value is True else str(value)


def _range_equalized(
    model: nn.Module, calibration: Iterable[Any] | torch.Tensor, names: set[str], inplace: bool
) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with the depthwise inputs' ranges equalized."""
    import copy

    from dfcompress.quant._crosslayer import equalize_activation_ranges

    base = model if inplace else copy.deepcopy(model)
    equalize_activation_ranges(base, calibration, names)
    return base


def _per_row_weights(config: object) -> bool:
    """Whether ``config`` rounds weights with one scale per output row (or finer)."""
    from dfcompress.quant.config import PerChannel, PerGroup

    if not isinstance(config, IntQuant):
        return False
    g = config.granularity
    return isinstance(g, PerGroup) or (isinstance(g, PerChannel) and g.axis == 0)


def quantize(
    model: nn.Module,
    config: Config | Mixed | str | Sequence[Rule] = "int8",
    calibration: Iterable[Any] | torch.Tensor | None = None,
    select: SelectorLike | None = None,
    *,
    inplace: bool = False,
    progress: bool = True,
    max_samples: int = 256,
    input_shape: Sequence[int] | None = None,
    fold_bn: bool = True,
    bias_correction: bool | None = None,
    bn_reestimation: bool = False,
    pack: bool = False,
    finetune: Callable[[nn.Module, int], None] | None = None,
    target: str | None = None,
    rounding: str = "nearest",
    cross_layer_equalization: bool | str = False,
) -> nn.Module:
    """Quantize a model: prepare, calibrate and convert in one call.

    Args:
        model: A float model (never changed unless ``inplace``).
        config: A config name (``"int8"``, ``"int8-onnx"``, ``"int8-weight"``, ``"int4"``,
            ``"int4-mixed"``, ``"fp16"``, ``"bf16"``), a config (``IntQuant(...)``, ``FP16()``, ...)
            or a list of ``(selector, config)`` rules such as
            ``dfcompress.presets.ise(8, 4, 8)``. ``"int4-mixed"``: weight-only
            int4 (groups of 32) except the layers that a sensitivity scan on the
            calibration data (each layer rounded to 4 bits on its own, the
            model's output change measured) keeps at int8 per channel.
        calibration: Data for the activation ranges (a loader or a tensor). If
            activations are quantized and none is given, inputs are synthesized
            from the model's BatchNorm statistics (:func:`synthesize_inputs`)
            and a notice is logged on the ``"dfcompress"`` logger.
        select: Which layers a single config applies to (default: every conv
            and linear). Not allowed together with a list of rules.
        inplace: Change ``model`` itself instead of a copy.
        progress: Show progress bars.
        max_samples: Calibration samples to use (synthesized: at most 32).
        input_shape: One sample's shape for synthesized inputs; by default from
            the first conv: ``(C, 224, 224)`` for Conv2d, ``(C, 224)`` for Conv1d,
            ``(C, 8, 112, 112)`` for Conv3d.
        fold_bn: Fold BatchNorm into the integer-quantized convs before them.
        bias_correction: Subtract from each quantized layer's bias the mean
            output error its quantization (weight, and input and output where
            quantized) causes on the calibration data; one more pass over it.
            None (default): on for a network with a depthwise convolution that
            gets integer weights, when ``calibration`` is given and ``finetune``
            is not; off otherwise (synthesized inputs, networks without depthwise
            layers, quantization-aware training). Same rule with a ``target``.
            Pretrained depthwise networks gain most (see the quantization docs).
        bn_reestimation: Recompute unfolded BatchNorm statistics through the
            quantized layers on the calibration data (with ``fold_bn=False``).
        pack: Store weights as integers (int8, or two int4 per byte) so the
            saved file is 1/4 (int8) or about 1/8 (int4) of float32.
        finetune: Quantization-aware training: called once as
            ``finetune(model, 0)`` on the calibrated model before it is frozen,
            to train it in place through the fake quantizers (weights are
            re-quantized from the current weight at every step, activation
            ranges stay as calibrated). ``dfcompress.distill_finetune(model,
            train_loader, lr=3e-5, alpha=1.0)`` distils from the float model;
            keep the learning rate small, since BatchNorm is folded into the
            weights. A BatchNorm left unfolded keeps its running statistics
            (eval mode) throughout, unless ``fold_bn=False``; its weight and
            bias train. The latent weights of binary convolutions (exact in
            int8) do not train. With a ``target``, the model trained is the
            target's finished model, weight scales kept as calibrated too (see
            the deployment docs).
        target: The runtime the model is made for: ``"xnnpack"`` (ExecuTorch) or
            ``"onnxruntime"``. The returned eager model computes what that runtime
            computes, carries the target (``dfcompress.export`` picks it up) and
            exports to it within the agreement thresholds. None: dfcompress's own
            fake-quantized modules (see the deployment docs for how they export).
        rounding: ``"nearest"``, or ``"adaptive"``: each Conv2d/Linear layer
            learns on the calibration data whether to round each weight up or
            down (AdaRound-style, a few hundred steps per layer; needs
            ``calibration``). Helps most at 4 bits and on depthwise convs.
            ``"gptq"``: layer by layer in forward order, each layer's weights
            are fitted to the float model's output on the inputs the model
            quantized so far gives it, then rounded one input column at a time
            with the columns not yet rounded corrected for the error
            (GPTQ-style; runs the model up to each layer, minutes for a
            MobileNetV2 on a CPU; needs ``calibration``). ``"balanced"``:
            nearest rounding, then in each output row (or group) the fewest
            weights moved to their other nearest code so that the row's sum of
            codes is the rounded sum of its weights, keeping each filter's
            response to flat regions; data-free and instant. Not with a
            ``target`` (those take ``"nearest"`` or ``"gptq"``).
        cross_layer_equalization: Rescale consecutive convolutions (conv ->
            ReLU/ReLU6 -> conv, depthwise included) so that their per-channel
            weight ranges are even, without changing the float model; data-free.
            Mostly for per-tensor weights; ReLU6 between such layers becomes a
            per-channel clamp. ``"weights"`` is the same as True.
            ``"activations"``: instead even out the per-channel ranges of each
            depthwise convolution's input, measured on ``calibration``: the
            layer before it (conv -> BatchNorm -> ReLU/ReLU6) scales its narrow
            channels up and the depthwise filters scale them back down, so the
            per-tensor input scale serves every channel. Free for per-channel
            weights, nothing added to the graph, and available with a
            ``target`` (see the quantization docs).

    Returns:
        The quantized model, frozen (scales fixed).

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    >>> x = torch.randn(8, 3, 16, 16)
    >>> q = quantize(net, "int8", calibration=x, progress=False)
    >>> bool((q(x) - net(x)).abs().max() < 0.05)
    True
    """
    check_model(model)
    has_layers(model, what="quantize")
    equalize = _check_equalization(cross_layer_equalization, calibration)
    for flag, value in (
        ("inplace", inplace),
        ("progress", progress),
        ("fold_bn", fold_bn),
        ("bn_reestimation", bn_reestimation),
        ("pack", pack),
    ):
        check_bool(value, flag)
    if target is not None:
        from dfcompress.deploy._targets import check_target, target_module

        name = check_target(target)
        _target_options(
            name,
            inplace=inplace,
            fold_bn=fold_bn,
            bn_reestimation=bn_reestimation,
            pack=pack,
            rounding=rounding,
            cross_layer_equalization=cross_layer_equalization,
        )
        _check_rounding(rounding, calibration)
        module = target_module(name)
        if not hasattr(module, "quantize"):
            raise DfcompressError(
                f"target={target!r} has no quantized form; export the float or "
                "16-bit model to it, or quantize for 'xnnpack' or 'onnxruntime'"
            )
        if equalize == "activations":
            # read once: the ranges and the target's calibration see the same samples
            calibration = calibration_inputs(calibration, limit=max_samples)
            layers = {n for n, m in model.named_modules() if _layers.layer_kind(m) is not None}
            model = _range_equalized(model, cast("list[torch.Tensor]", calibration), layers, False)
        made: nn.Module = module.quantize(
            model,
            config,
            calibration,
            select=select,
            progress=progress,
            max_samples=max_samples,
            input_shape=input_shape,
            bias_correction=bias_correction,
            finetune=finetune,
            **({} if rounding == "nearest" else {"rounding": rounding}),
        )
        return made
    input_shape = check_calibration_options(max_samples, bias_correction, input_shape, finetune)
    mixed: Mixed | None = None
    if isinstance(config, Mixed) or (isinstance(config, str) and config.lower() == "int4-mixed"):
        mixed = config if isinstance(config, Mixed) else Mixed()
        rules: list[Rule] = []  # from the sensitivity scan below, once the data is read
    elif isinstance(config, (str, IntQuant)) or not isinstance(config, (Sequence, Mixed)):
        cfg = resolve_config(config)
        rules = [(select if select is not None else "all", cfg)]
    else:
        if select is not None:
            raise DfcompressError(
                "select= applies to a single config; with a list of rules put the selectors "
                "in the rules"
            )
        rules = list(cast("Sequence[Rule]", config))
    # read once: a generator serves calibration, bias correction and BN re-estimation
    calibration = calibration_inputs(calibration, limit=max_samples)
    _check_rounding(rounding, calibration)
    if mixed is not None:
        rules = _mixed_rules(model, calibration, select, input_shape, mixed, fold_bn)
    qz = Quantizer(
        rules,
        fold_bn=fold_bn,
        bn_reestimation=bn_reestimation,
        rounding=rounding,
        cross_layer_equalization=equalize == "weights",
        qat=finetune is not None,
    )
    qz.warn = False  # one warning for the whole call, below
    plan = qz.plan(model)
    if equalize == "activations" and calibration is not None:
        per_row = {n for n, c in plan.items() if _per_row_weights(c)}
        model = _range_equalized(model, calibration, per_row, inplace)
        inplace = True  # ``model`` is now the caller's own (inplace) or a copy made here
    if bias_correction is None:
        ints = [n for n, c in plan.items() if isinstance(c, IntQuant)]
        bias_correction = auto_bias_correction(model, ints, calibration is not None, finetune)
    qz.bias_correction = bias_correction
    data: Iterable[Any] | torch.Tensor | None = calibration
    if calibration is None and any(_quantizes_inputs(c) for c in plan.values()):
        # Synthesized from the model as given: shapes and BatchNorm statistics are
        # gone once layers are wrapped and folded (in place, under compress).
        shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
        n = min(max_samples, 32)
        _log.warning(
            "dfcompress: no calibration data given; calibrating on %d inputs of shape %s "
            "synthesized from the BatchNorm statistics (pass calibration= for better "
            "accuracy)",
            n,
            shape,
        )
        data = synthesize_inputs(model, shape, n)
    prepared = qz.prepare(model, inplace=inplace)
    extra_pass = (
        bias_correction or bn_reestimation or rounding != "nearest"
    ) and calibration is not None
    if data is not None and (_needs_calibration(prepared) or extra_pass):
        qz.calibrate(prepared, data, progress=progress, max_samples=max_samples)
    warn_float(qz.left_float, verb="quantize", stacklevel=2)
    if finetune is not None:
        with frozen_for_qat(prepared, batchnorms=fold_bn):
            finetune(prepared, 0)
        prepared.eval()
    return qz.convert(prepared, pack=pack, inplace=True)


@contextlib.contextmanager
def frozen_for_qat(model: nn.Module, batchnorms: bool = True) -> Iterator[None]:
    """Keep every BatchNorm of ``model`` in eval mode, whatever ``model.train()`` asks
    (with ``batchnorms``), and the latent weights of its binary convolutions out of
    training.

    QAT fine-tunes a calibrated model briefly: a BatchNorm left unfolded (after a
    binary convolution, after a product) keeps the running statistics the ranges
    were calibrated with; in training mode it would normalize each batch by its
    own statistics and move the running ones, so that the model evaluated
    afterwards is not the one trained. Its weight and bias still train.
    (``quantize(..., fold_bn=False)`` asks for BatchNorm statistics that follow the
    quantized activations: ``batchnorms=False`` leaves them training.)
    A binary weight is exact in int8 (nothing to recover), and its latent value
    is small: an optimizer step that moves every weight by about the learning
    rate (Adam's) flips the signs of many.

    >>> bn = nn.BatchNorm1d(2).eval()
    >>> with frozen_for_qat(nn.Sequential(bn)):
    ...     _ = nn.Sequential(bn).train()
    ...     bn.training
    False
    """

    def keep_eval(self: nn.Module, mode: bool = True) -> nn.Module:
        self.training = False
        return self

    from dfcompress.models._binary import BinaryConv2d

    modules = list(model.modules())
    bn = nn.modules.batchnorm._BatchNorm
    norms = [m for m in modules if isinstance(m, bn)] if batchnorms else []
    latent = [
        m.weight
        for m in modules
        if isinstance(m, BinaryConv2d) and m.weight is not None and m.weight.requires_grad
    ]
    for m in norms:
        m.eval()
        m.train = types.MethodType(keep_eval, m)  # type: ignore[method-assign]
    for w in latent:
        w.requires_grad_(False)
    try:
        yield
    finally:
        for m in norms:
            del m.train
        for w in latent:
            w.requires_grad_(True)
