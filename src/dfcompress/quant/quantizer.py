"""Quantizer: rules ``(selector, config)`` -> prepare, calibrate, convert.

The first rule whose selector matches a layer decides its config; layers no
rule matches stay as they are. ``Conv1d``/``Conv2d``/``Conv3d`` and ``Linear``
layers are wrapped, subclasses included: one that overrides ``forward`` is
wrapped when a probe shows its forward computes with its own ``weight`` and
``bias`` (its forward then runs with the quantized weight). Layers left float
although a rule selected them (a subclass that fails the probe, a binary
layer, ``nn.MultiheadAttention``'s output projection, whose weight attention
reads directly, a layer no calibration input reached) are named in one
:class:`~dfcompress.FloatLayersWarning` and by
:func:`dfcompress.summary`.

>>> from torch import nn
>>> from dfcompress.quant.config import IntQuant, PerTensor
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
...                     nn.Linear(8 * 6 * 6, 2))
>>> qz = Quantizer([("head", "float"), ("all", "int8")])
>>> prepared = qz.prepare(net)
>>> qz.calibrate(prepared, torch.randn(16, 3, 8, 8), progress=False)
>>> final = qz.convert(prepared, pack=True)
>>> [type(m).__name__ for m in final]
['QuantConv2d', 'FoldedBatchNorm', 'ReLU', 'Flatten', 'Linear']
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dfcompress._calibration import calibration_inputs, checked_inputs
from dfcompress._summary import FloatReason, mark_float, warn_float
from dfcompress._validate import check_bool, check_int, check_model
from dfcompress.errors import DfcompressError
from dfcompress.quant import _layers
from dfcompress.quant._adaround import adaround_model
from dfcompress.quant._balanced import balanced_rounding
from dfcompress.quant._bnfold import _set_submodule, fold_batchnorms
from dfcompress.quant._crosslayer import equalize_pairs
from dfcompress.quant._gptq import MAX_COLUMNS
from dfcompress.quant._passes import correct_biases, quant_layers, reestimate_bn, run
from dfcompress.quant._sequential import gptq_sequential
from dfcompress.quant.cast import CAST_CLASSES, CastLayer
from dfcompress.quant.config import BF16, FP16, Config, Float, IntQuant, resolve_config
from dfcompress.quant.modules import QUANT_CLASSES, QuantLayer
from dfcompress.select import SelectorLike, as_selector, select

__all__ = ["Quantizer", "Rule"]

_log = logging.getLogger("dfcompress")

Rule = tuple[SelectorLike, Config | str]

#: The weight rounding modes (see :class:`Quantizer`).
ROUNDINGS: tuple[str, ...] = ("nearest", "adaptive", "gptq", "balanced")

#: The rounding modes that choose codes from calibration data.
DATA_ROUNDINGS: tuple[str, ...] = ("adaptive", "gptq")


def _unwrappable(name: str, module: nn.Module, parents: dict[str, nn.Module]) -> FloatReason | None:
    """Why a selected conv/linear layer cannot be wrapped, or None if it can."""
    from dfcompress.prune._targets import is_binary

    if is_binary(module):
        return "unsupported subclass"
    if _layers.has_own_forward(module) and not _layers.reads_own_weight(module):
        _log.info(
            "dfcompress: %s (%s) has a forward that does not compute with its own weight; "
            "left float",
            name,
            type(module).__name__,
        )
        return "unsupported subclass"
    parent = parents.get(name.rpartition(".")[0])
    if isinstance(parent, nn.MultiheadAttention):
        return "read by its parent"
    return None


class Quantizer:
    """Apply quantization configs to the layers picked by selectors.

    Args:
        rules: ``[(selector, config), ...]``; a selector is anything
            :func:`dfcompress.select.as_selector` accepts, a config an
            :class:`~dfcompress.quant.config.IntQuant`, ``FP16``, ``BF16``,
            ``Float`` or a name for :func:`~dfcompress.quant.config.resolve_config`.
        fold_bn: Fold eval-mode BatchNorm layers into the integer-quantized or
            cast (FP16/BF16) convs that feed them: what an int8 runtime executes,
            and no BatchNorm statistics left to store. Turn off for QAT that
            should keep training BatchNorm statistics.
        bias_correction: After calibration, subtract from each quantized
            layer's bias the mean output error its weight quantization causes on
            the calibration data (helps depthwise-heavy networks).
        bn_reestimation: After calibration, recompute the running statistics of
            the BatchNorm layers left unfolded from the calibration data as seen
            through the quantized layers (use with ``fold_bn=False``).
        rounding: ``"nearest"`` (each weight to its nearest code) or
            ``"adaptive"``: after calibration, each Conv2d/Linear layer learns
            whether to round each weight up or down so that its output on the
            calibration data changes least (AdaRound-style; a few hundred Adam
            steps per layer on sampled inputs, kept only where it lowers that
            error); or ``"gptq"``: after calibration, the Conv2d/Linear layers
            in forward order, each fitted to the float model's output on the
            inputs the model quantized so far gives it and rounded one input
            column at a time, the columns not yet rounded corrected for the
            error (GPTQ-style; kept per group only where it lands closer to the
            float output than nearest rounding); or ``"balanced"``: nearest, then
            the fewest weights of each unit sharing a scale moved to their other
            nearest code so that the unit's sum of codes is its rounded true sum
            (each filter's response to a constant input kept; data-free: in
            ``calibrate``, or ``convert`` when no calibration runs; see
            :mod:`dfcompress.quant._balanced`).
        cross_layer_equalization: Before wrapping, rescale consecutive
            convolutions (conv -> ReLU/ReLU6/identity -> conv, depthwise
            included) so that each channel's weight range is shared evenly
            between them, without changing the float model (see
            :mod:`dfcompress.quant._crosslayer`; ReLU6 becomes a per-channel clamp).
        qat: The prepared model will be trained (quantization-aware training):
            symmetric weight scales then span half the code range (``max|w| /
            127.5``) so that the clipped largest weights get no gradient and the
            scale that follows them stays steady; otherwise each row's largest
            weight maps exactly onto the largest code (``/ 127``).
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        fold_bn: bool = True,
        bias_correction: bool = False,
        bn_reestimation: bool = False,
        rounding: str = "nearest",
        cross_layer_equalization: bool = False,
        qat: bool = False,
    ) -> None:
        if isinstance(rules, (str, tuple)) or not isinstance(rules, Sequence) or not rules:
            raise DfcompressError(
                f"rules={rules!r} must be a non-empty list of (selector, config) pairs, "
                "e.g. [('conv', 'int8')]"
            )
        check_bool(fold_bn, "fold_bn")
        check_bool(bias_correction, "bias_correction")
        check_bool(bn_reestimation, "bn_reestimation")
        check_bool(cross_layer_equalization, "cross_layer_equalization")
        check_bool(qat, "qat")
        if rounding not in ROUNDINGS:
            raise DfcompressError(
                f"rounding={rounding!r} is unknown: use one of {', '.join(map(repr, ROUNDINGS))}"
            )
        parsed = []
        for rule in rules:
            if not isinstance(rule, tuple) or len(rule) != 2:
                raise DfcompressError(f"rule {rule!r} must be a (selector, config) pair")
            parsed.append((as_selector(rule[0]), resolve_config(rule[1])))
        self.rules = parsed
        self.fold_bn = fold_bn
        self.bias_correction = bias_correction
        self.bn_reestimation = bn_reestimation
        self.rounding = rounding
        self.cross_layer_equalization = cross_layer_equalization
        self.qat = qat
        # quantize() turns this off and warns once for the whole call.
        self.warn = True
        # Selected layers the last prepare/calibrate left float (rules' Float() excluded).
        self.left_float: dict[str, FloatReason] = {}

    def __repr__(self) -> str:
        return f"Quantizer({self.rules!r}, fold_bn={self.fold_bn})"

    def plan(self, model: nn.Module) -> dict[str, Config]:
        """The config each layer of ``model`` gets (first matching rule wins), in model order."""
        return self._plan(model)[0]

    def _plan(self, model: nn.Module) -> tuple[dict[str, Config], dict[str, FloatReason]]:
        """The plan, and the selected conv/linear layers left float with the reason."""
        parents = dict(model.named_modules())
        out: dict[str, Config] = {}
        left: dict[str, FloatReason] = {}
        for sel, cfg in self.rules:
            hit = sel.resolve(model)
            if isinstance(cfg, (FP16, BF16)) and cfg.keep:
                kept = select(model, list(cfg.keep))
                for name in kept:
                    if name in hit and name not in out and _layers.layer_kind(hit[name]):
                        left.setdefault(name, "kept by a rule")
                hit = {n: m for n, m in hit.items() if n not in kept}
            took = 0
            for name, mod in hit.items():
                if name in out or name in left or _layers.layer_kind(mod) is None:
                    continue
                why = _unwrappable(name, mod, parents)
                if why is not None:
                    left[name] = why
                    continue
                out[name] = cfg
                took += 1
            if not took:
                _log.info("dfcompress: rule %r -> %r matched no new conv/linear layer", sel, cfg)
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        for name, cfg in out.items():
            if isinstance(cfg, Float):
                left[name] = "kept by a rule"
        plan = dict(sorted(out.items(), key=lambda kv: order[kv[0]]))
        return plan, dict(sorted(left.items(), key=lambda kv: order[kv[0]]))

    def prepare(self, model: nn.Module, inplace: bool = False) -> nn.Module:
        """Insert quantizers: wrap every planned layer (a new model unless ``inplace``).

        Weights are fake-quantized from then on (so the result can be trained,
        QAT); input quantizers pass values through until :meth:`calibrate`.
        """
        check_model(model)
        check_bool(inplace, "inplace")
        plan, left = self._plan(model)
        if not plan:
            raise DfcompressError(
                f"no conv/linear layer of {type(model).__name__} matched the rules "
                f"{[(repr(s), c) for s, c in self.rules]}"
                + (f"; left float: {_first(left)}" if left else "")
            )
        m = model if inplace else copy.deepcopy(model)
        for name, why in left.items():
            mark_float(m.get_submodule(name), why)
        self.left_float = {n: w for n, w in left.items() if w != "kept by a rule"}
        if self.warn:
            warn_float(self.left_float, verb="Quantizer.prepare", stacklevel=2)
        if self.fold_bn:
            fold_batchnorms(m, {n for n, c in plan.items() if not isinstance(c, Float)})
        if self.cross_layer_equalization:
            equalize_pairs(m, {n for n, c in plan.items() if isinstance(c, IntQuant)})
        counts: dict[str, int] = {}
        for name, cfg in plan.items():
            mod = m.get_submodule(name)
            kind = _layers.layer_kind(mod)
            if kind is None or isinstance(cfg, Float):
                continue
            new: nn.Module
            if isinstance(cfg, IntQuant):
                new = QUANT_CLASSES[kind].from_float(mod, cfg, name, exact_max=not self.qat)
                label = f"int{cfg.bits}"
            else:
                new = CAST_CLASSES[kind].from_float(mod, cfg.dtype, name)
                label = type(cfg).__name__.lower()
            _set_submodule(m, name, new)
            counts[label] = counts.get(label, 0) + 1
        _log.info("dfcompress: prepared %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return m

    def calibrate(
        self,
        model: nn.Module,
        data: Iterable[Any] | torch.Tensor,
        progress: bool = True,
        max_samples: int | None = None,
    ) -> None:
        """Run ``data`` through a prepared model and freeze its input quantizers' ranges.

        Args:
            model: A model returned by :meth:`prepare` (changed in place).
            data: A loader (tensors, ``(input, label)`` tuples or dicts) or one tensor.
            progress: Show a progress bar.
            max_samples: Use at most this many samples.
        """
        check_model(model)
        check_bool(progress, "progress")
        if max_samples is not None:
            check_int(max_samples, "max_samples", low=1)
        if data is None:
            raise DfcompressError(
                "calibrate() needs data: pass a loader or a tensor of inputs, not data=None"
            )
        if max_samples is None:
            data = checked_inputs(data, name="data") or []
        else:
            data = calibration_inputs(data, limit=max_samples, name="data") or []
        layers = quant_layers(model)
        if not layers and not any(isinstance(x, CastLayer) for x in model.modules()):
            raise DfcompressError("calibrate() needs a model returned by Quantizer.prepare()")
        inputs = [
            q
            for m in layers.values()
            for q in (m.input_quant, m.output_quant)
            if q is not None and q.mode != "dynamic"
        ]
        adaptive = self.rounding in DATA_ROUNDINGS
        if not inputs and not (self.bias_correction or self.bn_reestimation or adaptive):
            return  # nothing to calibrate: weights are quantized from themselves
        for q in inputs:
            q.mode = "observe"
        n = run(model, data, progress, max_samples, "calibrating")
        if n == 0:
            raise DfcompressError("the calibration data yielded no samples")
        for layer in layers.values():
            layer.equalize_()  # gives the input observers of smoothed layers their range
        unused = [
            name
            for name, layer in layers.items()
            if layer.input_quant is not None
            and layer.input_quant.mode == "observe"
            and not layer.input_quant.observer.ready
        ]
        for name in unused:
            # Never reached by forward: its activation range is unknown, so it stays float.
            _set_submodule(
                model, name, mark_float(_to_float(layers.pop(name)), "unused in forward")
            )
        if unused and not layers:
            raise DfcompressError(
                f"none of the {len(unused)} quantized layers ({', '.join(unused[:3])}...) saw "
                "an input during calibration: check that the data reaches the model's forward"
            )
        self.left_float.update(dict.fromkeys(unused, "unused in forward"))
        if self.warn:
            warn_float(
                dict.fromkeys(unused, "unused in forward"), verb="Quantizer.calibrate", stacklevel=2
            )
        inputs = [
            q for m in layers.values() for q in (m.input_quant, m.output_quant) if q in inputs
        ]
        for q in inputs:
            q.freeze()
        rounded: dict[str, torch.Tensor] = {}
        fitted: set[str] = set()
        if self.rounding == "adaptive":
            rounded = adaround_model(model, data, progress, max_samples)
        elif self.rounding == "gptq":
            rounded, fitted = gptq_sequential(
                model, data, progress, max_samples, max_columns=MAX_COLUMNS
            )
        elif self.rounding == "balanced":
            rounded = balanced_rounding(layers)
        if self.bias_correction:
            correct_biases(model, data, progress, max_samples, reference=rounded, skip=fitted)
        if self.bn_reestimation:
            reestimate_bn(model, data, progress, max_samples)

    def convert(self, model: nn.Module, pack: bool = False, inplace: bool = False) -> nn.Module:
        """Freeze every quantizer; with ``pack=True`` store weights as int8 / two int4 per byte.

        Returns a new model unless ``inplace``.
        """
        check_model(model)
        check_bool(pack, "pack")
        check_bool(inplace, "inplace")
        m = model if inplace else copy.deepcopy(model)
        for name, layer in quant_layers(m).items():
            for q, what in ((layer.input_quant, "input"), (layer.output_quant, "output")):
                if q is not None and q.mode in ("off", "observe"):
                    raise DfcompressError(
                        f"layer {name!r} quantizes its {what} but was not calibrated: "
                        "run Quantizer.calibrate(model, data) before convert()"
                    )
            if self.rounding == "balanced" and layer.weight_quant.mode != "fixed":
                balanced_rounding({name: layer})  # no calibration ran: rounded here
            layer.freeze_()
            if pack:
                if layer.weight_quant.mode == "dynamic":
                    raise DfcompressError(
                        f"layer {name!r} uses the dynamic observer, whose ranges change at "
                        "every forward: its weights cannot be packed (use pack=False)"
                    )
                layer.pack_()
        return m


def _first(left: dict[str, FloatReason], n: int = 3) -> str:
    items = [f"{k} ({v})" for k, v in list(left.items())[:n]]
    return ", ".join(items) + (f" and {len(left) - n} more" if len(left) > n else "")


def _to_float(layer: QuantLayer) -> nn.Module:
    """The float layer a wrapper was made from (sharing its float weight and bias)."""
    if layer.weight is None:  # pragma: no cover - calibration happens before packing
        raise DfcompressError("cannot restore a float layer from packed weights")
    if layer.inner is not None:
        inner = layer.inner
        for key in ("weight", "bias"):
            inner.__dict__.pop(key, None)
        inner.weight = layer.weight
        inner.register_parameter("bias", layer.bias)
        return inner
    return _layers.float_layer(layer.layer_kind, layer.args, layer.weight, layer.bias)
