"""Which layers XNNPACK runs in int8, and with which ranges: rules -> a PT2E quantizer.

dfcompress's selection rules decide per conv/linear layer; the layers a rule
leaves out are taken out of ExecuTorch's ``XNNPACKQuantizer`` by module name, so
they run in float in the eager model and in the file alike. XNNPACK runs static
int8 only: a rule asking for other bits, weight-only or 16-bit floats is refused
with the layers named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
from torch import fx, nn
from torchao.quantization.pt2e import FakeQuantize
from torchao.quantization.pt2e.quantizer import (
    QuantizationConfig,
    QuantizationSpec,
    get_module_name_filter,
)

from dfcompress._summary import FloatReason, LayerRow
from dfcompress.deploy._xnnpack_clamp import annotate_conv_clamp
from dfcompress.deploy._xnnpack_observers import ACT_RANGE, WEIGHT_RANGE, PT2EObserver
from dfcompress.deploy._xnnpack_sigmoid import annotate_sigmoids, split_silu
from dfcompress.errors import DfcompressError
from dfcompress.quant import _layers
from dfcompress.quant.config import Float, IntQuant, resolve_config
from dfcompress.quant.quantizer import Quantizer, Rule
from dfcompress.select import SelectorLike

__all__ = ["DEFAULT_ACT_OBSERVER", "Plan", "make_plan", "make_quantizer", "summary_rows"]

#: Activation ranges of the named ``"int8"`` config. Measured on torchvision's ImageNet
#: MobileNetV2 (64 calibration and 128 test crops at 112 px, top-1 agreement with
#: float / KL): percentile 0.805 / 0.13, ExecuTorch's stock histogram 0.734 / 0.23,
#: MSE search 0.758 / 0.32, min/max 0.617 / 0.46.
DEFAULT_ACT_OBSERVER = "percentile"


@dataclass(frozen=True)
class Plan:
    """The int8 layers, the float ones with their reason, and the observers.

    Attributes:
        int8: Names of the conv/linear layers XNNPACK runs in int8.
        left_float: ``{name: reason}`` of the conv/linear layers kept float.
        act_observer: dfcompress observer of the activation ranges.
        weight_observer: dfcompress observer of the per-channel weight ranges.
        percentile: Percentile of the ``"percentile"`` observer.
    """

    int8: tuple[str, ...]
    left_float: dict[str, FloatReason]
    act_observer: str
    weight_observer: str
    percentile: float = 99.99


def _rules(config: Any, select: SelectorLike | None) -> list[Rule]:
    if isinstance(config, (str, IntQuant)) or not isinstance(config, Sequence):
        return [(select if select is not None else "all", resolve_config(config))]
    if select is not None:
        raise DfcompressError(
            "select= applies to a single config; with a list of rules put the selectors "
            "in the rules"
        )
    return list(cast("Sequence[Rule]", config))


def _refuse(bad: dict[str, str]) -> None:
    if not bad:
        return
    shown = ", ".join(f"{n} ({c})" for n, c in list(bad.items())[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    raise DfcompressError(
        f"target='xnnpack' runs static int8 only, but the rules ask {shown}{more}: use "
        "IntQuant(8) with activations (the 'int8' config) or Float() for these layers, or "
        "quantize without target= for dfcompress's own fake-quantized layers"
    )


def make_plan(model: nn.Module, config: Any, select: SelectorLike | None) -> Plan:
    """The XNNPACK plan of ``model`` under ``config`` (a name, a config or rules)."""
    named = isinstance(config, str) and config.lower() == "int8"
    plan, left = Quantizer(_rules(config, select))._plan(model)
    bad: dict[str, str] = {}
    ints: dict[str, IntQuant] = {}
    for name, cfg in plan.items():
        if isinstance(cfg, Float):
            continue
        if not isinstance(cfg, IntQuant):
            bad[name] = type(cfg).__name__
        elif cfg.bits != 8 or cfg.activations is None:
            bad[name] = f"int{cfg.bits}" + ("" if cfg.activations else " weight-only")
        elif cfg.observer == "dynamic" or cfg.activations.observer == "dynamic":
            bad[name] = "dynamic ranges"
        else:
            ints[name] = cfg
    _refuse(bad)
    acts = {c.activations.observer for c in ints.values() if c.activations is not None}
    weights = {c.observer for c in ints.values()}
    if len(acts) > 1 or len(weights) > 1:
        raise DfcompressError(
            f"target='xnnpack' takes one activation observer and one weight observer, got "
            f"activations {sorted(acts)} and weights {sorted(weights)}: give every int8 rule "
            "the same observers"
        )
    first = next(iter(ints.values()), None)
    act = (
        DEFAULT_ACT_OBSERVER
        if named or first is None or first.activations is None
        else (first.activations.observer)
    )
    weight = "minmax" if first is None else first.observer
    pct = 99.99 if first is None or first.activations is None else first.activations.percentile
    return Plan(tuple(ints), left, act, weight, pct)


def _spec(observer: str, weights: bool, percentile: float, qat: bool) -> QuantizationSpec:
    qmin, qmax = WEIGHT_RANGE if weights else ACT_RANGE
    scheme = torch.per_channel_symmetric if weights else torch.per_tensor_affine
    kwargs: dict[str, Any] = {"method": observer, "percentile": percentile}
    ctr: Any = PT2EObserver.with_args(**kwargs)
    if qat:
        ctr = FakeQuantize.with_args(observer=PT2EObserver, **kwargs)
    return QuantizationSpec(
        dtype=torch.int8,
        quant_min=qmin,
        quant_max=qmax,
        qscheme=scheme,
        ch_axis=0 if weights else None,
        is_dynamic=False,
        observer_or_fake_quant_ctr=ctr,
    )


class _ClampFusingQuantizer(XNNPACKQuantizer):  # type: ignore[misc]
    """ExecuTorch's quantizer, with conv (+BN) + ReLU6/Hardtanh fused like conv + ReLU."""

    def transform_for_annotation(self, model: fx.GraphModule) -> fx.GraphModule:
        split_silu(model)
        out: fx.GraphModule = super().transform_for_annotation(model)
        return out

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        if self.global_config is not None:
            annotate_conv_clamp(model, self.global_config, self.filter_fn)
        out: fx.GraphModule = super().annotate(model)
        config = self.global_config
        if config is not None and config.output_activation is not None:
            annotate_sigmoids(out, config.output_activation, self.filter_fn)
        return out


def make_quantizer(plan: Plan, model: nn.Module, *, qat: bool = False) -> XNNPACKQuantizer:
    """ExecuTorch's XNNPACK quantizer with dfcompress's observers, float layers taken out.

    Convolutions followed by a ReLU6 or another Hardtanh get one int8 range after the
    clamp (:mod:`dfcompress.deploy._xnnpack_clamp`).
    """
    act = _spec(plan.act_observer, False, plan.percentile, qat)
    weight = _spec(plan.weight_observer, True, plan.percentile, qat)
    config = QuantizationConfig(act, act, weight, None, is_qat=qat)
    quantizer = _ClampFusingQuantizer().set_global(config)
    # Layers outside every rule, or kept float by one, are left unannotated: float in
    # the graph, so float in the file (the partitioner lowers them in fp32).
    names = [n for n, m in model.named_modules() if _layers.layer_kind(m) and n not in plan.int8]
    in_float = [get_module_name_filter(n) for n in names]

    def annotate(node: fx.Node) -> bool:
        return not any(f(node) for f in in_float)

    if in_float:
        quantizer.set_filter_function(annotate)
    return quantizer


def summary_rows(model: nn.Module, plan: Plan) -> tuple[LayerRow, ...]:
    """One :class:`LayerRow` per conv/linear layer of the float ``model``."""
    rows: list[LayerRow] = []
    for name, m in model.named_modules():
        kind = _layers.layer_kind(m)
        weight = getattr(m, "weight", None)
        if kind is None or not isinstance(weight, torch.Tensor):
            continue
        zeros = float((weight == 0).sum()) / max(1, weight.numel())
        if name in plan.int8:
            rows.append(LayerRow(name, type(m).__name__, kind, weight.numel(), "int8", zeros, None))
        else:
            why: FloatReason = plan.left_float.get(name, "not selected")
            action = "pruned" if zeros > 0 else "float"
            row = LayerRow(name, type(m).__name__, kind, weight.numel(), action, zeros, why)
            rows.append(row)
    return tuple(rows)
