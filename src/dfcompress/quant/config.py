"""Quantization configs: frozen dataclasses validated on construction.

Granularity is a small type whose docstring gives the shape of the scale for a
weight of shape ``(out, in, *kernel)``:

- :class:`PerTensor`: one scale, shape ``()``;
- :class:`PerChannel`: one scale per index of ``axis``, shape ``(out,)`` for ``axis=0``;
- :class:`PerGroup`: one scale per ``size`` consecutive input channels of each
  output row, shape ``(out, in // size)``.

Layer configs: :class:`IntQuant` (integer fake-quant, optionally with its input
activations quantized too), :class:`FP16`, :class:`BF16` (casts) and
:class:`Float` (leave the layer as it is). :func:`resolve_config` turns the
names ``"int8"``, ``"int4"``, ``"fp16"``, ``"bf16"``, ``"float"`` into configs.

>>> resolve_config("int4").granularity
PerGroup(size=32, fallback=PerChannel(axis=0))
>>> IntQuant(bits=1)
Traceback (most recent call last):
...
dfcompress.errors.DfcompressError: bits=1 is out of range: use an integer in 2..16
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from dfcompress.errors import DfcompressError
from dfcompress.quant.functional import check_bits, int_range

__all__ = [
    "BF16",
    "CONFIG_NAMES",
    "FP16",
    "UINT8_ACTIVATIONS",
    "UINT8_OUTPUTS",
    "Config",
    "Float",
    "Granularity",
    "IntQuant",
    "Mixed",
    "ObserverName",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "config_from_dict",
    "config_to_dict",
    "resolve_config",
]

ObserverName = Literal["minmax", "moving_average", "percentile", "mse", "dynamic"]
OBSERVERS: tuple[str, ...] = get_args(ObserverName)


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor (scale shape ``()``)."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (scale shape ``(w.shape[axis],)``).

    ``PerChannel(0)`` is per output channel / per output row of a weight.
    """

    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise DfcompressError(f"PerChannel axis={self.axis!r} must be an integer")


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive input channels of each output row.

    For a weight of shape ``(out, in, *kernel)`` the scale has shape
    ``(out, in // size)``; a group spans its input channels' whole kernels.
    A layer whose input size is not a multiple of ``size`` (a 3-channel stem,
    a depthwise conv) uses ``fallback``; with ``fallback=None`` it is an error
    raised by ``prepare`` naming the layer.
    """

    size: int = 32
    fallback: PerChannel | PerTensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise DfcompressError(f"PerGroup size={self.size!r} must be a positive integer")
        if self.fallback is not None and not isinstance(self.fallback, (PerChannel, PerTensor)):
            raise DfcompressError(
                f"PerGroup fallback={self.fallback!r} must be PerChannel(...), PerTensor() or None"
            )


Granularity = PerTensor | PerChannel | PerGroup


@dataclass(frozen=True)
class IntQuant:
    """Integer fake quantization of a conv/linear weight, and optionally of its input.

    Args:
        bits: Code width, 2..16.
        granularity: :class:`PerTensor`, :class:`PerChannel` or :class:`PerGroup`.
        symmetric: Signed codes centred on zero (zero point 0, none stored) if
            True; unsigned codes with a zero point if False.
        observer: How the range is found: ``"minmax"``, ``"moving_average"``,
            ``"percentile"``, ``"mse"`` (search of the clipping range) or
            ``"dynamic"`` (min/max recomputed at every forward, never frozen).
        activations: How to quantize the layer's input (an :class:`IntQuant`
            with per-tensor granularity and no ``activations`` of its own), or
            None for weight-only quantization.
        percentile: The percentile used by the ``"percentile"`` observer.
        smoothing: Activation equalization strength ``alpha`` in [0, 1], or
            None for none. Calibration then divides each input channel by a
            factor ``s_j = max|x_j| ** alpha / max|W_:j| ** (1 - alpha)`` before
            the per-tensor input quantizer and multiplies the weights that read
            it by ``s_j`` (the layer computes the same function; the weights
            absorb the channels' uneven ranges). Depthwise convs with
            per-channel weights use ``alpha = 1``, which costs their weights
            nothing. ``"auto"`` picks ``alpha`` per layer from
            {0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1} by the layer's output error
            predicted from rounding noise (its weights, the input channels'
            ranges and their mean squares on the first calibration batch); no
            extra forward pass. Needs ``activations`` with the ``"minmax"``
            observer.
        outputs: How to quantize a convolution's output (an :class:`IntQuant`
            with per-tensor granularity, no ``activations`` or ``smoothing`` and
            a static observer), or None to leave it float. It simulates a
            runtime that stores every int8 convolution's result in 8 bits, as
            ONNX Runtime's QLinearConv does: the output, after the bias (and the
            BatchNorm folded into it) and before any activation, is rounded per
            tensor with a range calibrated with the input ranges. Calibration,
            quantization-aware training and the eager model then see the
            rounding the deployed model does, and
            :func:`~dfcompress.export_onnx` uses these calibrated scales instead
            of measuring its own. Linear layers ignore it (ONNX Runtime's
            integer matrix products return float). Needs ``activations``.

    >>> IntQuant(8, activations=IntQuant(8, PerTensor(), symmetric=False)).activations.symmetric
    False
    >>> IntQuant(8, observer="max")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: observer='max' is unknown: use one of minmax, ...
    """

    bits: int = 8
    granularity: Granularity = field(default_factory=lambda: PerChannel(0))
    symmetric: bool = True
    observer: ObserverName = "minmax"
    activations: IntQuant | None = None
    percentile: float = 99.99
    smoothing: float | Literal["auto"] | None = None
    outputs: IntQuant | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        self._check_outputs()
        sm = self.smoothing
        if sm is not None:
            if sm != "auto" and (
                isinstance(sm, bool) or not isinstance(sm, (int, float)) or not 0.0 <= sm <= 1.0
            ):
                raise DfcompressError(
                    f"smoothing={sm!r} is out of range: use a number in [0, 1] or 'auto'"
                )
            if self.activations is None or self.activations.observer != "minmax":
                raise DfcompressError(
                    f"smoothing={sm!r} needs activations=IntQuant(..., observer='minmax'), "
                    f"got activations={self.activations!r}"
                )
        if not isinstance(self.granularity, (PerTensor, PerChannel, PerGroup)):
            raise DfcompressError(
                f"granularity={self.granularity!r} is not a granularity: use PerTensor(), "
                "PerChannel(axis) or PerGroup(size)"
            )
        if self.observer not in OBSERVERS:
            raise DfcompressError(
                f"observer={self.observer!r} is unknown: use one of {', '.join(OBSERVERS)}"
            )
        if not isinstance(self.percentile, (int, float)) or not 50.0 < self.percentile <= 100.0:
            raise DfcompressError(f"percentile={self.percentile!r} is out of range: use (50, 100]")
        a = self.activations
        if a is not None:
            if not isinstance(a, IntQuant):
                raise DfcompressError(f"activations={a!r} must be an IntQuant or None")
            if a.activations is not None:
                raise DfcompressError("activations=IntQuant(...) must not set activations itself")
            if not isinstance(a.granularity, PerTensor):
                raise DfcompressError(
                    f"activation granularity {a.granularity!r} is not supported: use PerTensor()"
                )

    def _check_outputs(self) -> None:
        o = self.outputs
        if o is None:
            return
        if not isinstance(o, IntQuant):
            raise DfcompressError(f"outputs={o!r} must be an IntQuant or None")
        if self.activations is None:
            raise DfcompressError(
                f"outputs={o!r} simulates an int8 runtime's requantized outputs and needs "
                "activations=IntQuant(...) too"
            )
        if not isinstance(o.granularity, PerTensor):
            raise DfcompressError(
                f"output granularity {o.granularity!r} is not supported: use PerTensor()"
            )
        if o.activations is not None or o.outputs is not None or o.smoothing is not None:
            raise DfcompressError(
                "outputs=IntQuant(...) must not set activations, outputs or smoothing itself"
            )
        if o.observer == "dynamic":
            raise DfcompressError(
                "outputs=IntQuant(observer='dynamic') cannot be exported with a fixed scale: "
                "use 'minmax', 'moving_average', 'percentile' or 'mse'"
            )

    @property
    def qrange(self) -> tuple[int, int]:
        """``(qmin, qmax)``: signed codes when symmetric, unsigned otherwise."""
        return int_range(self.bits, signed=self.symmetric)


@dataclass(frozen=True)
class _Cast:
    keep: tuple[str, ...] = ("bn",)

    def __post_init__(self) -> None:
        if isinstance(self.keep, str) or not all(isinstance(k, str) for k in self.keep):
            raise DfcompressError(
                f"keep={self.keep!r} must be a tuple of selector names, e.g. ('bn', 'head')"
            )

    @property
    def dtype(self) -> torch.dtype:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class FP16(_Cast):
    """Cast conv/linear layers to float16 (inputs cast in, outputs cast back).

    ``keep`` lists selectors (``"bn"``, ``"head"``, globs) of layers left in float32;
    BatchNorm is never cast since only conv and linear layers are.
    """

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16


@dataclass(frozen=True)
class BF16(_Cast):
    """Cast conv/linear layers to bfloat16; see :class:`FP16`."""

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16


@dataclass(frozen=True)
class Float:
    """Leave the selected layers in float32 (``32`` in an I-SE-O preset)."""


Config = IntQuant | FP16 | BF16 | Float


def _weight_only(name: str, value: object) -> None:
    if not isinstance(value, IntQuant) or value.activations is not None:
        raise DfcompressError(
            f"{name}={value!r} must be a weight-only IntQuant (activations=None), "
            "such as IntQuant(4, PerGroup(32))"
        )


@dataclass(frozen=True)
class Mixed:
    """Weight-only mixed precision chosen by a sensitivity scan (``"int4-mixed"`` is ``Mixed()``).

    :func:`~dfcompress.quantize` rounds each conv and linear layer to ``low`` on
    its own and measures how much the model's output changes on the calibration
    data (mean squared change over the output's variance). Layers go to ``high``
    in order of that noise per weight until the noise of the layers left at
    ``low`` sums to at most ``budget``. When that plan would take the packed
    file past ``max_size`` times the float model's file
    (:func:`dfcompress.io.serialized_size`), each layer gets instead the config
    among ``high``, ``low`` and ``low``'s bits in ``coarser_groups`` that
    together leave the least measured noise within the limit.

    Args:
        low: The config of most layers (default: int4 in groups of 32).
        high: The config of the sensitive ones (default: int8 per channel).
        budget: The output noise the ``low`` layers may add together.
        max_size: The largest packed file as a fraction of the float file, in
            (0, 1], or None for no limit.
        coarser_groups: Group sizes the size-limited plan may also give a layer
            at ``low``'s bits when the budget's plan does not fit ``max_size``:
            fewer scales, so fewer bytes, for a little more noise (ignored when
            ``low`` is not per group; ``()`` for ``low``'s own groups only).

    >>> Mixed(max_size=0.2).budget
    0.005
    >>> Mixed(max_size=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: max_size=2 is out of range: use a fraction ...
    """

    low: IntQuant = field(default_factory=lambda: IntQuant(4, PerGroup(32, PerChannel(0))))
    high: IntQuant = field(default_factory=lambda: IntQuant(8, PerChannel(0)))
    budget: float = 0.005
    max_size: float | None = None
    coarser_groups: tuple[int, ...] = (64, 128)

    def __post_init__(self) -> None:
        _weight_only("low", self.low)
        _weight_only("high", self.high)
        g = self.coarser_groups
        if not isinstance(g, tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in g
        ):
            raise DfcompressError(
                f"coarser_groups={g!r} must be a tuple of positive integer group sizes, "
                "such as (64, 128), or ()"
            )
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < float("inf"):
            raise DfcompressError(f"budget={b!r} is out of range: use a finite number >= 0")
        m = self.max_size
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0
        ):
            raise DfcompressError(
                f"max_size={m!r} is out of range: use a fraction of the float file in (0, 1], "
                "or None"
            )


#: The activation equalization strength of the named ``"int8"`` config.
SMOOTHING: float | Literal["auto"] = 0.8


#: Per-tensor asymmetric uint8-style activations calibrated with min/max (ONNX
#: Runtime's default activation type), for ``activations=``.
UINT8_ACTIVATIONS = IntQuant(8, PerTensor(), False, "minmax")

#: Per-tensor asymmetric uint8-style convolution outputs, for ``outputs=``. The
#: ``"mse"`` observer clips the rare extreme values of an output that min/max
#: would stretch the whole 8-bit range for (EfficientNet-B0 on the proxy task:
#: AUC 0.915 instead of 0.874 before any fine-tuning, float 0.934).
UINT8_OUTPUTS = IntQuant(8, PerTensor(), False, "mse")


def _int8() -> IntQuant:
    # Activations: asymmetric uint8 per tensor, ONNX Runtime's default and
    # fastest activation type; weights: symmetric int8 per output channel.
    # Equalization lets per-tensor activation scales serve networks whose
    # channels differ widely in range (depthwise/SE backbones such as EfficientNet).
    return IntQuant(8, PerChannel(0), True, "minmax", UINT8_ACTIVATIONS, smoothing=SMOOTHING)


_NAMED: dict[str, Any] = {
    "int8": _int8,
    "int8-onnx": lambda: dataclasses.replace(_int8(), outputs=UINT8_OUTPUTS),
    "int8-weight": lambda: IntQuant(8, PerChannel(0)),
    "int4": lambda: IntQuant(4, PerGroup(32, fallback=PerChannel(0))),
    "fp16": FP16,
    "bf16": BF16,
    "float": Float,
}
CONFIG_NAMES: tuple[str, ...] = tuple(_NAMED)


def resolve_config(config: Config | str) -> Config:
    """A config from a name (``"int8"``, ``"int8-onnx"``, ``"int8-weight"``, ``"int4"``,
    ``"fp16"``, ``"bf16"``, ``"float"``) or a config itself.

    - ``"int8"``: per-channel symmetric int8 weights, per-tensor asymmetric
      (uint8-style) int8 activations calibrated with min/max, after activation
      equalization (``smoothing=0.8``, see :class:`IntQuant`);
    - ``"int8-onnx"``: ``"int8"`` whose convolution outputs are also rounded to
      calibrated uint8 codes, as ONNX Runtime's int8 convolutions do (see
      ``outputs`` in :class:`IntQuant`): the eager model computes what the
      exported one does;
    - ``"int8-weight"``: the same weights, float activations;
    - ``"int4"``: weight-only symmetric int4 in groups of 32 input channels
      (per output channel where 32 does not divide the input size).

    >>> resolve_config("fp16")
    FP16(keep=('bn',))
    >>> resolve_config("int3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dfcompress.errors.DfcompressError: unknown quantization config 'int3': use one of int8, ...
    """
    if isinstance(config, (IntQuant, FP16, BF16, Float)):
        return config
    if isinstance(config, str) and config.lower() in _NAMED:
        made: Config = _NAMED[config.lower()]()
        return made
    raise DfcompressError(
        f"unknown quantization config {config!r}: use one of {', '.join(CONFIG_NAMES)}, "
        "or a config such as IntQuant(bits=3)"
    )


_TYPES: dict[str, type[Any]] = {
    c.__name__: c for c in (PerTensor, PerChannel, PerGroup, IntQuant, FP16, BF16, Float)
}


_OMITTED_WHEN_NONE = frozenset({"outputs"})


def config_to_dict(obj: Any) -> Any:
    """A JSON-able form of a config (nested dicts tagged with ``"type"``).

    >>> config_from_dict(config_to_dict(resolve_config("int8"))) == resolve_config("int8")
    True
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in _OMITTED_WHEN_NONE and value is None:
                continue  # files written before the field existed stay identical
            out[f.name] = config_to_dict(value)
        return out
    if isinstance(obj, tuple):
        return [config_to_dict(v) for v in obj]
    return obj


def config_from_dict(d: Any) -> Any:
    """Inverse of :func:`config_to_dict`."""
    if isinstance(d, dict):
        cls = _TYPES.get(str(d.get("type")))
        if cls is None:
            raise DfcompressError(f"unknown config type {d.get('type')!r} in {d!r}")
        kwargs = {k: config_from_dict(v) for k, v in d.items() if k != "type"}
        if "keep" in kwargs:
            kwargs["keep"] = tuple(kwargs["keep"])
        return cls(**kwargs)
    return d
