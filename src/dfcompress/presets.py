"""Ready-made quantization rules.

:func:`ise` builds the I-SE-O mixed-precision rules of the BNext compression
study: I = the stem (first conv), SE = every conv/linear inside a
squeeze-and-excitation branch, O = the classifier head; 32 leaves that part in
float, 4/8/16 quantizes its weights to that many bits.

>>> [(repr(s), c) for s, c in ise(8, 32, 8)][1]
("preset('se')", Float())
"""

from __future__ import annotations

from dfcompress.errors import DfcompressError
from dfcompress.quant.config import Config, Float, IntQuant, ObserverName, PerChannel, PerTensor
from dfcompress.quant.quantizer import Rule
from dfcompress.select import preset

__all__ = ["ise"]

_ALLOWED = (4, 8, 16, 32)


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
) -> list[Rule]:
    """I-SE-O rules for :class:`~dfcompress.quant.quantizer.Quantizer` or :func:`quantize`.

    Args:
        i: Bits of the stem conv (4, 8, 16; 32 = float).
        se: Bits of the squeeze-and-excitation convs.
        o: Bits of the classifier head.
        activations: Also quantize those layers' inputs, per tensor and
            asymmetric, at 8 bits (16 for 16-bit layers).
        observer: Weight observer; ``"dynamic"`` (asymmetric min/max per output
            row at every forward) reproduces the original study's quantizer.

    Returns:
        ``[("stem", ...), ("se", ...), ("head", ...)]``; other layers stay float.

    >>> rules = ise(8, 4, 8)
    >>> rules[1][1].bits, rules[1][1].granularity
    (4, PerChannel(axis=0))
    """
    return [
        (preset("stem"), _config(i, "i", activations, observer)),
        (preset("se"), _config(se, "se", activations, observer)),
        (preset("head"), _config(o, "o", activations, observer)),
    ]
