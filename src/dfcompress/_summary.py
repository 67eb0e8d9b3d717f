"""What was done to every conv/linear layer of a model, and why a layer stayed float.

:func:`summary` lists each ``Conv1d``/``Conv2d``/``Conv3d``/``Linear`` layer
(subclasses included) with what it holds now: ``"int8"``/``"int4"`` (any
``"intN"``), ``"fp16"``, ``"bf16"``, ``"pruned"`` (float with zeroed weights)
or ``"float"``, and for a float layer the reason (:data:`FloatReason`). The
verbs record the reason on the layers they leave float, and warn once with a
:class:`FloatLayersWarning` when layers they were asked to compress stay float.

>>> import torch
>>> from torch import nn
>>> from dfcompress import quantize
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
>>> s = summary(quantize(net, "int8-weight", select="conv", progress=False))
>>> [(r.name, r.action, r.reason) for r in s]
[('0', 'int8', None), ('2', 'float', 'not selected')]
>>> print(s.to_markdown().splitlines()[0])
| layer | type | done | sparsity | params | why float |
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["FloatLayersWarning", "FloatReason", "LayerRow", "ModelSummary", "summary"]

PRUNED_MIN = 0.01
"""Fraction of zero weights from which a float layer counts as ``"pruned"``."""

FloatReason = Literal[
    "not selected",
    "unused in forward",
    "unsupported subclass",
    "kept by a rule",
    "read by its parent",
]
"""Why a conv/linear layer holds float weights:

- ``"not selected"``: no selector or rule picked it;
- ``"unused in forward"``: no calibration input reached it, so it has no activation range;
- ``"unsupported subclass"``: its class has its own forward, and a probe found that
  forward does not compute with the layer's own ``weight`` and ``bias`` (or it
  binarizes its weights);
- ``"kept by a rule"``: a rule kept it float (``Float()``, or an FP16/BF16 ``keep`` list);
- ``"read by its parent"``: its parent reads the weight directly
  (``nn.MultiheadAttention``'s output projection).
"""

_REASON_ATTR = "dfc_float_reason"


class FloatLayersWarning(UserWarning):
    """Layers a verb was asked to compress stay float (the message names them)."""


def mark_float(module: nn.Module, reason: FloatReason) -> nn.Module:
    """Record on ``module`` why it stays float (read by :func:`summary`); returns it."""
    setattr(module, _REASON_ATTR, reason)
    return module


def warn_float(left: Mapping[str, FloatReason], *, verb: str = "", stacklevel: int = 2) -> None:
    """One :class:`FloatLayersWarning` naming the count and the first few layers of ``left``."""
    if not left:
        return
    shown = [f"{name} ({why})" for name, why in list(left.items())[:3]]
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    n = len(left)
    warnings.warn(
        FloatLayersWarning(
            f"{verb + ': ' if verb else ''}{n} selected layer{'s' if n > 1 else ''} "
            f"stay{'' if n > 1 else 's'} float: {', '.join(shown)}{more}; "
            "dfcompress.summary(model) lists every layer"
        ),
        stacklevel=stacklevel + 1,
    )


def recorded_float(model: nn.Module) -> dict[str, FloatReason]:
    """Layers of ``model`` a verb was asked to compress but left float, with the reason."""
    out: dict[str, FloatReason] = {}
    for name, m in model.named_modules():
        why = getattr(m, _REASON_ATTR, None)
        if (
            why is not None
            and why != "kept by a rule"
            and isinstance(getattr(m, "weight", None), torch.Tensor)
        ):
            out[name] = why
    return out


@dataclass(frozen=True)
class LayerRow:
    """One conv/linear layer of a :class:`ModelSummary`.

    Attributes:
        name: The module name in the model.
        layer_type: The class of the original layer (``"Conv2d"``, or a subclass's name).
        kind: ``"conv1d"``, ``"conv2d"``, ``"conv3d"`` or ``"linear"``.
        params: Weight elements (the bias excluded).
        action: ``"int8"``, ``"int4"`` (``"intN"``), ``"fp16"``, ``"bf16"``,
            ``"pruned"`` (float weights, some zeroed) or ``"float"``.
        sparsity: Fraction of the weights that are zero.
        reason: Why the weights are float (``"float"`` rows), else None.
    """

    name: str
    layer_type: str
    kind: str
    params: int
    action: str
    sparsity: float
    reason: FloatReason | None


@dataclass(frozen=True)
class ModelSummary:
    """The rows of :func:`summary`, in model order; iterate it or call :meth:`to_markdown`."""

    rows: tuple[LayerRow, ...]

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        """Number of layers per action, e.g. ``{"int8": 81, "float": 1}``."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.action] = out.get(r.action, 0) + 1
        return out

    @property
    def quantized_share(self) -> float:
        """Fraction of the conv/linear weights held in integers or 16-bit floats."""
        total = sum(r.params for r in self.rows)
        done = sum(r.params for r in self.rows if r.action not in ("float", "pruned"))
        return done / total if total else 0.0

    @property
    def float_layers(self) -> dict[str, FloatReason]:
        """``{name: reason}`` of the layers whose weights are float."""
        return {r.name: r.reason for r in self.rows if r.reason is not None}

    def to_markdown(self) -> str:
        """A Markdown table, one line per layer."""
        lines = [
            "| layer | type | done | sparsity | params | why float |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.layer_type} | {r.action} | {r.sparsity:.1%} | {r.params:,} "
                f"| {r.reason or ''} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _zero_fraction(w: torch.Tensor) -> float:
    return float((w == 0).sum()) / max(1, w.numel())


def _row(name: str, m: nn.Module) -> LayerRow | None:
    from dfcompress.quant import _layers
    from dfcompress.quant.cast import CastLayer
    from dfcompress.quant.modules import QuantLayer

    with torch.no_grad():
        if isinstance(m, (QuantLayer, CastLayer)):
            inner = getattr(m, "inner", None)
            base = _layers.LAYER_TYPES[m.layer_kind].__name__
            layer_type = type(inner).__name__ if isinstance(inner, nn.Module) else base
            if isinstance(m, QuantLayer):
                w = m.quantized_weight()
                action = f"int{m.bits}"
            else:
                w = m.weight
                action = m.dtype_name.replace("float", "fp").replace("bfp", "bf")
            numel = int(torch.Size(_layers.weight_shape(m.layer_kind, m.args)).numel())
            return LayerRow(name, layer_type, m.layer_kind, numel, action, _zero_fraction(w), None)
        kind = _layers.layer_kind(m)
        weight = getattr(m, "weight", None)
        if kind is None or not isinstance(weight, torch.Tensor):
            return None
        sparsity = _zero_fraction(weight)
        reason: FloatReason | None = getattr(m, _REASON_ATTR, "not selected")
        # A few exact zeros (weights that underflowed in a 16-bit checkpoint) are not pruning.
        action = "pruned" if sparsity >= PRUNED_MIN else "float"
        if action == "pruned":
            reason = None
        return LayerRow(name, type(m).__name__, kind, weight.numel(), action, sparsity, reason)


def summary(model: nn.Module) -> ModelSummary:
    """Every conv/linear layer of ``model`` with what was done to it, or why it stayed float.

    Args:
        model: Any model: float, or returned by :func:`dfcompress.quantize`,
            :func:`dfcompress.prune` or :func:`dfcompress.compress`.

    Returns:
        A :class:`ModelSummary` (rows in model order, :meth:`~ModelSummary.to_markdown`).
    """
    from dfcompress.quant.cast import CastLayer
    from dfcompress.quant.modules import QuantLayer

    listed = getattr(model, "dfc_summary_rows", None)
    if isinstance(listed, tuple):  # an exported graph: its layers as the verb recorded them
        return ModelSummary(listed)
    rows: list[LayerRow] = []
    wrappers: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(w + ".") for w in wrappers):
            continue  # the original layer kept inside a wrapper
        row = _row(name, m)
        if row is not None:
            rows.append(row)
        if isinstance(m, (QuantLayer, CastLayer)):
            wrappers.append(name)
    return ModelSummary(tuple(rows))
