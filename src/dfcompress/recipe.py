"""Recipe strings such as ``"q8-p50"``: a thin, typed front over the compression configs.

A recipe is a list of tokens joined by ``-``:

- ``q16``: cast conv/linear layers to float16 (:class:`~dfcompress.quant.config.FP16`);
- ``bf16``: cast conv/linear layers to bfloat16;
- ``q8``: int8 weights (per channel) and activations (per tensor), calibrated;
- ``q4``: int4 weight-only, in groups of 32 input channels;
- ``pNN``: NN % L1 unstructured pruning, global, with per-layer amounts
  allocated from a sensitivity scan (``p50``);
- ``sNN``: NN % structured channel pruning (``s50``), BatchNorm statistics
  re-estimated on the calibration data when given;
- ``iseI-SE-O``: the BNext study's mixed precision: bits of the stem, of the
  squeeze-and-excitation convs and of the head, each 4, 8 or 16, or 32 for
  "leave in float" (``ise8-4-8``).

Whatever order the tokens are written in, pruning is applied first and
quantization last (``"q8-p50"`` prunes, then quantizes). A recipe holds at
most one quantization token and at most one token of each pruning kind.
``"baseline"`` is the empty recipe. :func:`parse_recipe` gives a typed
:class:`Recipe`, and ``str(recipe)`` writes it back.

>>> r = parse_recipe("q8-p50")
>>> r.steps
(Quantize(name='q8'), Prune(percent=50, method='l1'))
>>> [str(s) for s in r.ordered()], str(r)
(['p50', 'q8'], 'q8-p50')
>>> parse_recipe("ise8-32-8").steps
(MixedPrecision(i=8, se=32, o=8),)
"""

from __future__ import annotations

import copy
import difflib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from dfcompress._summary import FloatLayersWarning, recorded_float, warn_float
from dfcompress.errors import DfcompressError

__all__ = [
    "ISE_BITS",
    "QUANT_TOKENS",
    "MixedPrecision",
    "Prune",
    "Quantize",
    "Recipe",
    "Step",
    "compress",
    "parse_recipe",
]

QuantName: TypeAlias = Literal["q16", "bf16", "q8", "q4"]
QUANT_TOKENS: tuple[QuantName, ...] = ("q16", "bf16", "q8", "q4")
"""The single-token quantization recipes."""

ISE_BITS: tuple[int, ...] = (4, 8, 16, 32)
"""Bits allowed in an ``iseI-SE-O`` token (32 leaves that part in float)."""

_CONFIG_NAME: dict[str, str] = {"q16": "fp16", "bf16": "bf16", "q8": "int8", "q4": "int4"}
_PRUNE = re.compile(r"^([ps])(\d+)$")
_ISE = re.compile(r"^ise(\d+)$")
_EMPTY = "baseline"

VALID_TOKENS = (
    "q16 (float16), bf16 (bfloat16), q8 (int8), q4 (int4 weight-only), "
    "pNN (NN % L1 pruning, NN in 1..99), sNN (NN % channel pruning, NN in 1..99), "
    "iseI-SE-O (I-SE-O mixed precision, each of 4, 8, 16, 32), "
    "joined by '-' (e.g. 'q8-p50'), or 'baseline' for no compression"
)


@dataclass(frozen=True)
class Quantize:
    """One whole-model quantization token: ``q16``, ``bf16``, ``q8`` or ``q4``.

    >>> Quantize("q4").config_name
    'int4'
    """

    name: QuantName

    def __post_init__(self) -> None:
        if self.name not in QUANT_TOKENS:
            raise DfcompressError(
                f"quantization token {self.name!r} is unknown: use one of {', '.join(QUANT_TOKENS)}"
            )

    @property
    def config_name(self) -> str:
        """The :func:`~dfcompress.quant.config.resolve_config` name of this token."""
        return _CONFIG_NAME[self.name]

    @property
    def needs_calibration(self) -> bool:
        """Whether the config quantizes activations, whose ranges come from data."""
        return self.name == "q8"

    def __str__(self) -> str:
        return self.name

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (for ``model.dfc_history``)."""
        return {"op": "quantize", "token": self.name, "config": self.config_name}


@dataclass(frozen=True)
class Prune:
    """``pNN`` (L1 unstructured, global, sensitivity-allocated) or ``sNN`` (channels).

    >>> Prune(30, "structured").amount, str(Prune(30, "structured"))
    (0.3, 's30')
    """

    percent: int
    method: Literal["l1", "structured"] = "l1"

    def __post_init__(self) -> None:
        if isinstance(self.percent, bool) or not isinstance(self.percent, int):
            raise DfcompressError(f"percent={self.percent!r} must be an integer in 1..99")
        if not 1 <= self.percent <= 99:
            raise DfcompressError(f"percent={self.percent} is out of range: use 1..99")
        if self.method not in ("l1", "structured"):
            raise DfcompressError(f"method={self.method!r} is unknown: use 'l1' or 'structured'")

    @property
    def amount(self) -> float:
        """The fraction pruned, ``percent / 100``."""
        return self.percent / 100.0

    def __str__(self) -> str:
        return f"{'p' if self.method == 'l1' else 's'}{self.percent}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (for ``model.dfc_history``)."""
        return {"op": "prune", "token": str(self), "method": self.method, "amount": self.amount}


@dataclass(frozen=True)
class MixedPrecision:
    """``iseI-SE-O``: bits of the stem, the SE convs and the head (32 = float).

    >>> str(MixedPrecision(8, 4, 8)), len(MixedPrecision(8, 4, 8).rules())
    ('ise8-4-8', 3)
    """

    i: int
    se: int
    o: int

    def __post_init__(self) -> None:
        for what, bits in (("i", self.i), ("se", self.se), ("o", self.o)):
            if isinstance(bits, bool) or bits not in ISE_BITS:
                raise DfcompressError(
                    f"{what}={bits!r} is not supported in an ise token: use 4, 8 or 16 bits, "
                    "or 32 to leave it in float"
                )

    @property
    def needs_calibration(self) -> bool:
        """Whether any part is quantized (its activations are calibrated)."""
        return any(b != 32 for b in (self.i, self.se, self.o))

    def rules(self) -> list[Any]:
        """The :func:`dfcompress.presets.ise` rules of this token."""
        from dfcompress.presets import ise

        return list(ise(self.i, self.se, self.o))

    def __str__(self) -> str:
        return f"ise{self.i}-{self.se}-{self.o}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (for ``model.dfc_history``)."""
        return {"op": "quantize", "token": str(self), "i": self.i, "se": self.se, "o": self.o}


Step: TypeAlias = Quantize | Prune | MixedPrecision
"""One parsed recipe token."""


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: its steps in the order they were written.

    Use :meth:`ordered` for the order they are applied in (pruning first).

    >>> Recipe((Prune(50), Quantize("q16"))).ordered()[0]
    Prune(percent=50, method='l1')
    >>> Recipe((Quantize("q8"), Quantize("q4")))
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: a recipe takes at most one quantization token, got q8 and q4
    """

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            raise DfcompressError(f"steps={self.steps!r} must be a tuple of steps")
        quants = [s for s in self.steps if isinstance(s, (Quantize, MixedPrecision))]
        if len(quants) > 1:
            raise DfcompressError(
                "a recipe takes at most one quantization token, got "
                + " and ".join(str(s) for s in quants)
            )
        for method in ("l1", "structured"):
            same = [s for s in self.steps if isinstance(s, Prune) and s.method == method]
            if len(same) > 1:
                raise DfcompressError(
                    f"a recipe takes at most one {'pNN' if method == 'l1' else 'sNN'} token, got "
                    + " and ".join(str(s) for s in same)
                )
        for s in self.steps:
            if not isinstance(s, (Quantize, Prune, MixedPrecision)):
                raise DfcompressError(f"step {s!r} is not a Quantize, Prune or MixedPrecision")

    def ordered(self) -> tuple[Step, ...]:
        """Steps in application order: structured pruning, L1 pruning, then quantization."""

        def rank(s: Step) -> int:
            if isinstance(s, Prune):
                return 0 if s.method == "structured" else 1
            return 2

        return tuple(sorted(self.steps, key=rank))

    @property
    def needs_calibration(self) -> bool:
        """Whether some step needs calibration data (q8, an ise token, or pNN's scan)."""
        return any(
            (isinstance(s, Prune) and s.method == "l1") or getattr(s, "needs_calibration", False)
            for s in self.steps
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (for ``model.dfc_history``)."""
        return {"recipe": str(self), "steps": [s.as_dict() for s in self.ordered()]}

    def __str__(self) -> str:
        return "-".join(str(s) for s in self.steps) if self.steps else _EMPTY


def _unknown(token: str, text: str) -> DfcompressError:
    known = [*QUANT_TOKENS, "p50", "s50", "ise8-4-8", _EMPTY]
    close = difflib.get_close_matches(token, known, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DfcompressError(
        f"unknown recipe token {token!r} in {text!r}{hint}: valid tokens are {VALID_TOKENS}"
    )


def _ise_bits(piece: str, text: str) -> int:
    if not piece.isdigit() or int(piece) not in ISE_BITS:
        raise DfcompressError(
            f"ise bits {piece!r} in {text!r} are not supported: use 4, 8, 16 or 32 "
            "(e.g. 'ise8-4-8')"
        )
    return int(piece)


def parse_recipe(text: str | Recipe) -> Recipe:
    """Parse a recipe string (see the module docstring); a :class:`Recipe` passes through.

    Tokens are case-insensitive and surrounding spaces are ignored.

    Raises:
        DfcompressError: an unknown token (the message lists the valid ones), a
            percentage outside 1..99, or a repeated kind of step.

    >>> str(parse_recipe("Q16-P50"))
    'q16-p50'
    >>> try:
    ...     parse_recipe("q9")
    ... except DfcompressError as e:
    ...     print(str(e).split(": valid")[0])
    unknown recipe token 'q9' in 'q9' (did you mean 'q8'?)
    """
    if isinstance(text, Recipe):
        return text
    if not isinstance(text, str):
        raise DfcompressError(f"a recipe must be a string such as 'q8-p50', got {text!r}")
    clean = text.strip().lower()
    if clean in (_EMPTY, "none"):
        return Recipe(())
    if not clean:
        raise DfcompressError(f"the recipe is empty: valid tokens are {VALID_TOKENS}")
    pieces = clean.split("-")
    steps: list[Step] = []
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        if piece in QUANT_TOKENS:
            steps.append(Quantize(piece))
            i += 1
            continue
        m = _PRUNE.match(piece)
        if m:
            pct = int(m.group(2))
            if not 1 <= pct <= 99:
                raise DfcompressError(
                    f"recipe token {piece!r} in {text!r}: the percentage {pct} is out of "
                    "range, use 1..99"
                )
            steps.append(Prune(pct, "l1" if m.group(1) == "p" else "structured"))
            i += 1
            continue
        m = _ISE.match(piece)
        if m:
            if i + 2 >= len(pieces):
                raise DfcompressError(
                    f"recipe token {'-'.join(pieces[i:])!r} in {text!r} is incomplete: an ise "
                    "token has three bit widths, e.g. 'ise8-4-8'"
                )
            bits = [_ise_bits(p, text) for p in (m.group(1), pieces[i + 1], pieces[i + 2])]
            steps.append(MixedPrecision(*bits))
            i += 3
            continue
        raise _unknown(piece, text)
    return Recipe(tuple(steps))


def compress(
    model: nn.Module,
    recipe: str | Recipe,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    *,
    progress: bool = True,
    inplace: bool = False,
    **options: Any,
) -> nn.Module:
    """Compress ``model`` by a recipe such as ``"q8-p50"`` in one call.

    Pruning steps run first, then quantization. ``pNN`` is global L1 pruning
    with per-layer amounts allocated by a sensitivity scan on ``calibration``
    (data-free inputs when it is None); ``q8`` and ``ise`` tokens calibrate
    activation ranges on ``calibration`` (inputs synthesized from the
    BatchNorm statistics when it is None). Quantized weights are packed into
    real int8 / int4 storage (``pack=False`` keeps them float). The recipe and its
    steps are appended to ``model.dfc_history``, which :func:`dfcompress.save`
    stores in the file.

    Args:
        model: The float model.
        recipe: A recipe string (see :mod:`dfcompress.recipe`) or a :class:`Recipe`.
        calibration: A loader (tensors, ``(input, label, ...)`` tuples or dicts)
            or a tensor of inputs.
        progress: Show progress bars.
        inplace: Compress ``model`` itself instead of a copy.
        **options: Passed to :func:`dfcompress.prune.api.prune` (``scope``,
            ``sensitivity``, ``strategy``, ``metric``, ``steps``, ``schedule``,
            ``finetune``, ``prune_select`` as its ``select``, ``importance``,
            ``ignore``, ``recalibrate_bn``, ``example_inputs``) or to
            :func:`dfcompress.quant.api.quantize` (``select``, ``max_samples``,
            ``input_shape``, ``fold_bn``, ``bias_correction``, ``pack``, ``target``
            (the runtime the quantized layers are made for, e.g. ``"xnnpack"``), and
            ``quant_finetune`` as its ``finetune``: quantization-aware training).

    Returns:
        The compressed model (a new one unless ``inplace``), in eval mode.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 1))
    >>> small = compress(net, "q4-p50", torch.rand(8, 3, 16, 16), progress=False)
    >>> small.dfc_history[-1]["recipe"], type(net[0]).__name__
    ('q4-p50', 'Conv2d')
    """
    from dfcompress._calibration import calibration_inputs
    from dfcompress._compress import apply_step, split_options
    from dfcompress._validate import check_bool, check_int, check_model

    check_model(model)
    parsed = parse_recipe(recipe)
    check_bool(progress, "progress")
    check_bool(inplace, "inplace")
    prune_opts, quant_opts = split_options(options)
    max_samples = check_int(quant_opts.get("max_samples", 256), "max_samples", low=1)
    # Read once, up to what any step uses: a generator then serves every step.
    calibration = calibration_inputs(calibration, limit=max(max_samples, 256))
    history = list(getattr(model, "dfc_history", []))
    out = model if inplace else copy.deepcopy(model)
    with warnings.catch_warnings():
        # One warning for the whole recipe, below, instead of one per step.
        warnings.simplefilter("ignore", FloatLayersWarning)
        for step in parsed.ordered():
            out = apply_step(
                out,
                step,
                calibration,
                progress=progress,
                prune_options=prune_opts,
                quant_options=quant_opts,
            )
    warn_float(recorded_float(out), verb="compress", stacklevel=2)
    entry = parsed.as_dict()
    from dfcompress._version import __version__

    entry["dfcompress_version"] = __version__
    if options:
        entry["options"] = sorted(options)
    out.dfc_history = (
        history
        + [  # type: ignore[assignment]
            e for e in getattr(out, "dfc_history", []) if e not in history
        ]
        + [entry]
    )
    return out.eval()
