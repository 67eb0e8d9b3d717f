"""Ready-made quantization rules.

:func:`ise` builds the I-SE-O mixed-precision rules of the BNext compression
study: I = the stem (first conv), SE = every conv/linear of a
squeeze-and-excitation branch (found by structure, see
:mod:`dfcompress.select`), O = the classifier head; 32 leaves that part in
float, 4/8/16 quantizes its weights to that many bits.

>>> [(repr(s), c) for s, c in ise(8, 32, 8)][1]
("preset('se')", Float())
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant.config import Config, Float, IntQuant, ObserverName, PerChannel, PerTensor
from dfcompress.quant.quantizer import Rule
from dfcompress.select import CONV_TYPES, LINEAR_TYPES, SelectionWarning, Selector, preset

__all__ = ["IseMatch", "IseRules", "ise"]

_ALLOWED = (4, 8, 16, 32)
Part = Literal["stem", "se", "head"]
_PARTS: dict[Part, str] = {
    "stem": "I (the stem conv)",
    "se": "SE (the squeeze-and-excitation convs)",
    "head": "O (the classifier head)",
}


@dataclass(frozen=True)
class IseMatch:
    """How many conv/linear layers each part of I-SE-O rules matched in one model.

    Attributes:
        model: the model's class name.
        stem: layers matched by the I part (1 for any model with a conv or linear).
        se: layers matched by the SE part (2 per squeeze-and-excitation branch,
            1 per ECA-style gate).
        head: layers matched by the O part.
    """

    model: str
    stem: int
    se: int
    head: int


class _Tally:
    """The counts of the model the rules were last resolved against."""

    def __init__(self) -> None:
        self.model: str = ""
        self.model_id = -1
        self.counts: dict[str, int] = {}


class _Part(Selector):
    """One part of I-SE-O rules: resolves like ``inner``, counts, warns when empty."""

    def __init__(self, part: Part, inner: Selector, tally: _Tally, label: str, used: bool):
        self.part, self.inner, self.tally, self.label, self.used = part, inner, tally, label, used

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        hit = self.inner.resolve(model)
        n = sum(isinstance(m, CONV_TYPES + LINEAR_TYPES) for m in hit.values())
        if self.tally.model_id != id(model):
            self.tally.model, self.tally.model_id, self.tally.counts = (
                type(model).__name__,
                id(model),
                {},
            )
        self.tally.counts[self.part] = n
        if n == 0 and self.used:
            warnings.warn(
                f"{self.label}: part {_PARTS[self.part]} matched no conv or linear layer of "
                f"{type(model).__name__}, so nothing there is quantized",
                SelectionWarning,
                stacklevel=2,
            )
        return hit

    def __repr__(self) -> str:
        return repr(self.inner)


class IseRules(list[Rule]):
    """The rules :func:`ise` returns: a plain list of ``(selector, config)`` pairs.

    Hand it to :class:`~dfcompress.quant.quantizer.Quantizer` or
    :func:`~dfcompress.quant.quantize`. Whenever its selectors are resolved
    against a model, a part that matches no layer (and is not left float) raises
    a :class:`~dfcompress.select.SelectionWarning`, and :attr:`matched` holds the
    counts.
    """

    def __init__(self, rules: list[Rule], tally: _Tally) -> None:
        super().__init__(rules)
        self._tally = tally

    @property
    def matched(self) -> IseMatch | None:
        """The layer counts of the last model all three parts were resolved against."""
        c = self._tally.counts
        if not all(p in c for p in _PARTS):
            return None
        return IseMatch(self._tally.model, c["stem"], c["se"], c["head"])

    def match(self, model: nn.Module) -> IseMatch:
        """Resolve every part against ``model`` now (warning on empty parts), and count.

        >>> from dfcompress.models import BNext
        >>> ise(8, 4, 8).match(BNext((8, 16), num_classes=2))
        IseMatch(model='BNext', stem=1, se=6, head=1)
        """
        self._tally.model_id = -1  # count afresh even if this model was seen before
        for sel, _cfg in self:
            if isinstance(sel, Selector):
                sel.resolve(model)
        c = self._tally.counts
        return IseMatch(type(model).__name__, c.get("stem", 0), c.get("se", 0), c.get("head", 0))


def _config(bits: int, what: str, activations: bool, observer: ObserverName) -> Config:
    if isinstance(bits, bool) or bits not in _ALLOWED:
        raise DfcompressError(
            f"{what}={bits!r} is not supported: use 4, 8 or 16 bits, or 32 to leave it float"
        )
    if bits == 32:
        return Float()
    symmetric = observer != "dynamic"
    acts = IntQuant(max(bits, 8), PerTensor(), symmetric=False) if activations else None
    return IntQuant(bits, PerChannel(0), symmetric=symmetric, observer=observer, activations=acts)


def ise(
    i: int,
    se: int,
    o: int,
    *,
    activations: bool = True,
    observer: ObserverName = "minmax",
    example: torch.Tensor | tuple[int, ...] | None = None,
) -> IseRules:
    """I-SE-O rules for :class:`~dfcompress.quant.quantizer.Quantizer` or :func:`quantize`.

    Args:
        i: Bits of the stem conv (4, 8, 16; 32 = float).
        se: Bits of the squeeze-and-excitation convs.
        o: Bits of the classifier head.
        activations: Also quantize those layers' inputs, per tensor and
            asymmetric, at 8 bits (16 for 16-bit layers).
        observer: Weight observer; ``"dynamic"`` (asymmetric min/max per output
            row at every forward) reproduces the original study's quantizer.
        example: The input tensor or input shape the model is probed with to
            find its SE branches (``preset("se", example=...)``); guessed from
            the first conv or linear layer when omitted.

    Returns:
        ``[("stem", ...), ("se", ...), ("head", ...)]`` as an :class:`IseRules`
        list; other layers stay float. A part that matches no layer of the model
        is reported with a :class:`~dfcompress.select.SelectionWarning`, and
        ``.matched`` / ``.match(model)`` give the layer counts.

    >>> rules = ise(8, 4, 8)
    >>> rules[1][1].bits, rules[1][1].granularity
    (4, PerChannel(axis=0))
    """
    configs = {
        "stem": _config(i, "i", activations, observer),
        "se": _config(se, "se", activations, observer),
        "head": _config(o, "o", activations, observer),
    }
    tally = _Tally()
    label = f"ise({i}, {se}, {o})"
    selectors: dict[Part, Selector] = {
        "stem": preset("stem"),
        "se": preset("se", example=example),
        "head": preset("head"),
    }
    rules: list[Rule] = [
        (_Part(part, sel, tally, label, not isinstance(configs[part], Float)), configs[part])
        for part, sel in selectors.items()
    ]
    return IseRules(rules, tally)
