"""QuantConv1d/2d/3d and QuantLinear: conv/linear layers with fake-quantized weights.

A wrapper *has* a float weight (or its packed integer codes), a bias, a weight
:class:`~dfcompress.quant.fake_quantizer.FakeQuantizer` and, when the config
quantizes activations, an input quantizer; ``forward`` calls ``F.conv*`` or
``F.linear``. A layer whose class overrides ``forward`` (a Conv2d subclass that
pads in its forward, say) is kept inside the wrapper as ``inner``, and its own
forward runs with the fake-quantized weight in place of its parameter. The
frozen parameters are readable attributes for exporters:
``bits``, ``weight_scale``, ``weight_zero_point``, ``weight_axis``,
``weight_group_size``, ``input_scale``, ``input_zero_point``, ``input_bits``.

>>> from torch import nn
>>> from dfcompress.quant.config import resolve_config
>>> q = QuantLinear.from_float(nn.Linear(16, 4), resolve_config("int8-weight"))
>>> q.bits, q.weight_scale.shape, q(torch.randn(2, 16)).shape
(8, torch.Size([4]), torch.Size([2, 4]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError
from dfcompress.quant import _equalize, _layers
from dfcompress.quant._layers import qshape as _qshape
from dfcompress.quant._layers import resolve_granularity
from dfcompress.quant.config import IntQuant, config_from_dict, config_to_dict
from dfcompress.quant.fake_quantizer import FakeQuantizer, Mode, exporting, fits_half
from dfcompress.quant.functional import dequantize, quantize
from dfcompress.quant.observers import check_finite
from dfcompress.quant.pack import pack, packed_dtype, packed_numel, unpack

__all__ = ["QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantLayer", "QuantLinear"]


_SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _versions(*tensors: torch.Tensor) -> tuple[int, ...] | None:
    """The tensors' version counters; None if one was made under ``torch.inference_mode()``.

    Inference tensors keep no version counter, so nothing could tell that a
    weight computed from them went stale: it is then recomputed every forward.
    """
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


def _trackable(w: torch.Tensor) -> torch.Tensor:
    """``w``, or a copy of it that has a version counter when it is an inference tensor.

    The weight quantizer's tracking keys on the version counter; a fresh copy
    each call makes it recompute the range (nothing tells whether ``w`` changed).
    """
    if not w.is_inference():
        return w
    with torch.inference_mode(False):
        return w.clone()


def _cacheable(w: torch.Tensor) -> bool:
    # A weight computed under inference_mode is an inference tensor: kept, it
    # would break a later forward outside inference_mode that records gradients.
    return not w.is_inference()


class QuantLayer(nn.Module):
    """Common machinery of the quantized conv/linear wrappers (use the concrete classes)."""

    layer_kind: ClassVar[str]
    weight: nn.Parameter | None
    weight_packed: torch.Tensor | None
    bias: nn.Parameter | None
    input_quant: FakeQuantizer | None
    output_quant: FakeQuantizer | None
    inner: nn.Module | None

    def __init__(
        self,
        args: dict[str, Any],
        config: IntQuant,
        *,
        axis: int | None,
        group_size: int | None,
        packed: bool = False,
        weight_mode: Mode = "track",
        input_mode: Mode = "off",
        scale_dtype: torch.dtype | None = None,
        output_mode: Mode = "off",
        exact_max: bool = True,
    ) -> None:
        super().__init__()
        self.exact_max = exact_max
        self.args = dict(args)
        self.config = config
        _layers.mirror_attrs(self, self.args)
        shape = _layers.weight_shape(self.layer_kind, args)
        self._shape = shape
        # Packed per-group scales are stored in float16: in float32 they would cost
        # 1 bit per weight at group size 32, a quarter of an int4 weight.
        if scale_dtype is None:
            scale_dtype = torch.float16 if packed and group_size is not None else torch.float32
        # Weight scales put each row's largest magnitude exactly on qmax (127, or 7 at
        # 4 bits): at half the code range (127.5) that weight, often a depthwise
        # filter's main tap, would be clipped half a step towards zero. Layers made
        # for training (exact_max=False) keep half the range: there the clipped
        # largest weights get no gradient, which keeps the scale that follows them steady.
        self.weight_quant = FakeQuantizer(
            config,
            _qshape(shape, axis, group_size),
            axis,
            group_size,
            weight_mode,
            scale_dtype,
            restricted=exact_max,
        )
        # Weight scales take float16 values where float16 holds them at full precision,
        # so packed storage keeps them in 16 bits and computes exactly what this does.
        self.weight_quant.half_scales = True
        self.packed = packed
        if packed:
            self.register_parameter("weight", None)
            dt = packed_dtype(config.bits, config.symmetric)
            n = packed_numel(int(torch.Size(shape).numel()), config.bits)
            self.register_buffer("weight_packed", torch.zeros(n, dtype=dt))
        else:
            self.weight = nn.Parameter(torch.empty(shape))
            self.register_buffer("weight_packed", None)
        out = _layers.out_features(self.layer_kind, args)
        self.bias = nn.Parameter(torch.zeros(out)) if args["bias"] else None
        self.input_quant = None
        if config.activations is not None:
            self.input_quant = FakeQuantizer(config.activations, (), None, None, input_mode)
        # The output rounding of an int8 runtime (convolutions only; see IntQuant.outputs).
        self.output_quant = None
        if config.outputs is not None and self.layer_kind != "linear":
            self.output_quant = FakeQuantizer(config.outputs, (), None, None, output_mode)
        # Activation equalization factors (one per input channel; inputs are divided by them).
        self.input_smoothing: torch.Tensor | None
        if config.smoothing is not None and config.activations is not None:
            n_in = shape[1] * int(args.get("groups", 1))
            # float16: factors are rounded to float16 values, stored in 16 bits each.
            self.register_buffer("input_smoothing", torch.ones(n_in, dtype=torch.float16))
        else:
            self.register_buffer("input_smoothing", None)
        self._chan: tuple[torch.Tensor, torch.Tensor] | None = None
        # smoothing="auto": per-channel sum of x**2 and the count of values per channel.
        self._chan_sq: tuple[torch.Tensor, int] | None = None
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        # The original layer when its class has its own forward (without its weight/bias).
        self.inner = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_float(
        cls, module: nn.Module, config: IntQuant, name: str = "", exact_max: bool = True
    ) -> QuantLayer:
        """Wrap a float layer, sharing its weight and bias parameters.

        ``exact_max``: symmetric weight scales put each row's largest magnitude on
        the largest code (``/ 127``); False: half the code range (``/ 127.5``),
        for quantization-aware training.
        """
        if _layers.layer_kind(module) != cls.layer_kind:
            raise DfcompressError(f"{cls.__name__} cannot wrap a {type(module).__name__}")
        weight = module.weight
        if not isinstance(weight, nn.Parameter):
            raise DfcompressError(f"layer {name or '?'} has no weight parameter")
        shape = tuple(weight.shape)
        axis, group = resolve_granularity(config, shape, name)
        q = cls(
            _layers.layer_args(module), config, axis=axis, group_size=group, exact_max=exact_max
        )
        q.weight = weight
        q.bias = module.bias if isinstance(module.bias, nn.Parameter) else None
        if _layers.has_own_forward(module):
            _layers.detach_parameters(module)
            q.inner = module
        return q.to(weight.device)

    def dfc_spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments and state (for :func:`dfcompress.save`)."""
        spec: dict[str, Any] = {
            "args": self.args,
            "config": config_to_dict(self.config),
            "axis": self.weight_quant.axis,
            "group_size": self.weight_quant.group_size,
            "packed": self.packed,
            "weight_mode": self.weight_quant.mode,
            "input_mode": self.input_quant.mode if self.input_quant is not None else "off",
            "scale_dtype": str(self.weight_quant.scale.dtype).removeprefix("torch."),
        }
        if self.output_quant is not None:
            spec["output_mode"] = self.output_quant.mode
        if not self.exact_max:
            spec["exact_max"] = False
        if self.inner is not None:
            spec["own_forward"] = _layers.class_ref(self.inner)
        return spec

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> QuantLayer:
        """An empty wrapper with the same state-dict structure as the one that gave ``spec``."""
        _layers.check_args(cls.layer_kind, spec["args"])
        return cls(
            spec["args"],
            config_from_dict(spec["config"]),
            axis=spec["axis"],
            group_size=spec["group_size"],
            packed=bool(spec["packed"]),
            weight_mode=spec["weight_mode"],
            input_mode=spec["input_mode"],
            scale_dtype=_SCALE_DTYPES.get(str(spec.get("scale_dtype"))),
            output_mode=spec.get("output_mode", "off"),
            exact_max=bool(spec.get("exact_max", True)),
        )

    def dfc_adopt(self, spec: dict[str, Any], current: nn.Module | None) -> None:
        """On load: keep the constructor's layer as ``inner`` when ``spec`` ran its own forward."""
        if "own_forward" in spec:
            self.inner = _layers.adopt_own_forward(
                self.layer_kind, spec["own_forward"], current, type(self).__name__
            )

    # -- exporter-facing attributes -----------------------------------------------------

    @property
    def bits(self) -> int:
        """Weight bit width."""
        return self.config.bits

    @property
    def weight_scale(self) -> torch.Tensor:
        """Weight scale(s), shaped per granularity."""
        return self.weight_quant.scale

    @property
    def weight_zero_point(self) -> torch.Tensor:
        """Weight zero point(s) as int32 (zeros when symmetric)."""
        return self.weight_quant.zero_point_int32()

    @property
    def weight_axis(self) -> int | None:
        """Channel axis of the weight scale, or None (per tensor or per group)."""
        return self.weight_quant.axis

    @property
    def weight_group_size(self) -> int | None:
        """Group size along the input axis, or None."""
        return self.weight_quant.group_size

    @property
    def input_bits(self) -> int | None:
        """Input activation bit width, or None when activations stay float."""
        return self.input_quant.bits if self.input_quant is not None else None

    @property
    def input_scale(self) -> torch.Tensor | None:
        """Frozen input scale (per tensor), or None."""
        return self.input_quant.scale if self.input_quant is not None else None

    @property
    def input_zero_point(self) -> torch.Tensor | None:
        """Frozen input zero point as int32, or None."""
        return self.input_quant.zero_point_int32() if self.input_quant is not None else None

    @property
    def output_scale(self) -> torch.Tensor | None:
        """Frozen output scale (per tensor), or None when the output stays float."""
        return self.output_quant.scale if self.output_quant is not None else None

    @property
    def output_zero_point(self) -> torch.Tensor | None:
        """Frozen output zero point as int32, or None."""
        return self.output_quant.zero_point_int32() if self.output_quant is not None else None

    # -- weights --------------------------------------------------------------------------

    def int_weight(self) -> torch.Tensor:
        """The integer weight codes, shaped like the weight."""
        wq = self.weight_quant
        if self.weight_packed is not None:
            return unpack(self.weight_packed, self.bits, self.config.symmetric, self._shape)
        if self.weight is None:  # pragma: no cover - one of the two always exists
            raise DfcompressError("layer has neither a weight nor packed codes")
        if wq.mode in ("track", "dynamic"):
            wq.track(_trackable(self.weight))
        return quantize(
            self.weight.detach(),
            wq.scale,
            wq.zero_point_int32(),
            wq.qmin,
            wq.qmax,
            wq.axis,
            wq.group_size,
        )

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized (or unpacked and dequantized) float weight."""
        wq = self.weight_quant
        if self.weight_packed is not None:
            # While exporting, never the cached float weight: a tracer would store it as
            # a constant beside the packed codes. The unpacking is recorded instead.
            traced = exporting()
            versions = _versions(self.weight_packed, wq.scale)
            key = (*versions, id(self.weight_packed)) if versions is not None else None
            if not traced and key is not None and self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            w = dequantize(
                self.int_weight(), wq.scale, wq.zero_point_int32(), wq.axis, wq.group_size
            )
            if traced:
                if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
                    # Idempotent; lets an exporter see the QuantizeLinear/DequantizeLinear pair.
                    return wq.quantize_with(w, wq.scale, wq.zero_point_int32())
                return w
            self._cache = (key, w) if key is not None and _cacheable(w) else None
            return w
        if self.weight is None:  # pragma: no cover
            raise DfcompressError("layer has neither a weight nor packed codes")
        weight = _trackable(self.weight)
        if torch.is_grad_enabled() or wq.mode == "dynamic" or exporting():
            self._cache = None
            out: torch.Tensor = wq(weight)
            return out
        if wq.mode == "track":
            wq.track(weight)  # may change the scale, hence before the cache check
        versions = _versions(self.weight, wq.scale)
        if versions is None:
            self._cache = None
            fresh: torch.Tensor = wq(weight)
            return fresh
        wkey = (versions[0], self.weight.data_ptr(), versions[1], id(self.weight))
        if self._cache is None or self._cache[0] != wkey:
            computed: torch.Tensor = wq(weight)
            if not _cacheable(computed):
                return computed
            self._cache = (wkey, computed)
        return self._cache[1]

    def pack_(self) -> None:
        """Replace the float weight by its packed integer codes (after freezing)."""
        if self.weight_packed is not None:
            return
        if self.weight_quant.mode != "fixed":
            raise DfcompressError(
                f"cannot pack weights quantized in mode {self.weight_quant.mode!r}: "
                "only frozen (non-dynamic) weights can be packed"
            )
        wq = self.weight_quant
        if fits_half(wq.scale):
            # Stored scales cost 16 bits per channel or group instead of 32 (a
            # relative change of at most 2**-11, which the codes are computed with).
            wq.scale = wq.scale.to(torch.float16)
        codes = self.int_weight()
        self.weight = None
        self.weight_packed = pack(codes, self.bits, self.config.symmetric).to(codes.device)
        self.packed = True
        self._cache = None

    def freeze_(self) -> None:
        """Freeze the weight parameters from the current weight (unless frozen already)."""
        wq = self.weight_quant
        if wq.mode in ("dynamic", "fixed"):
            return  # fixed: frozen already (adaptive rounding chose codes for this scale)
        if self.weight is not None:
            wq.track(_trackable(self.weight))
        wq.mode = "fixed"

    # -- activation equalization ---------------------------------------------------------

    def smoothed_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` divided by the equalization factors (``x`` itself when there are none)."""
        s = self.input_smoothing
        if s is None:
            return x
        return x / self._factor_view(s, x)

    def _factor_view(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[_equalize.channel_dim(self.layer_kind, x)] = -1
        return s.to(x.dtype).reshape(shape)

    def _observe_channels(self, x: torch.Tensor) -> None:
        lo, hi = _equalize.channel_minmax(x, _equalize.channel_dim(self.layer_kind, x))
        check_finite(lo, hi, x)
        if self.config.smoothing == "auto" and self._chan_sq is None:
            # The first calibration batch is enough for the channels' mean squares.
            d = _equalize.channel_dim(self.layer_kind, x)
            dims = tuple(i for i in range(x.dim()) if i != d)
            self._chan_sq = (x.detach().float().pow(2).sum(dim=dims), x.numel() // x.shape[d])
        if self._chan is None:
            self._chan = (lo, hi)
        else:
            self._chan = (torch.minimum(self._chan[0], lo), torch.maximum(self._chan[1], hi))

    def equalize_(self) -> None:
        """Set the equalization factors from the observed inputs (calibration, ``observe`` mode).

        Rescales the weight so the layer computes the same function, and gives the
        input quantizer's observer the range of the rescaled input.
        """
        iq, s_old, alpha = self.input_quant, self.input_smoothing, self.config.smoothing
        if iq is None or s_old is None or alpha is None or self._chan is None:
            return
        if self.weight is None:
            raise DfcompressError("cannot equalize a layer whose weights are packed")
        groups = int(self.args.get("groups", 1))
        lo, hi = self._chan
        chan_sq, self._chan, self._chan_sq = self._chan_sq, None, None
        with torch.no_grad():
            w = _equalize.scale_weight_columns(self.weight, 1.0 / s_old.float(), groups)
            absorbed = (
                self.weight_quant.axis == 0 and self.weight_quant.group_size is None
            ) and w.shape[1] == 1
            if alpha == "auto" and not absorbed and chan_sq is not None:
                s = _equalize.auto_factors(
                    chan_sq[0] / max(1, chan_sq[1]),
                    w,
                    lo,
                    hi,
                    groups=groups,
                    act_bits=iq.config.bits,
                    weight_bits=self.config.bits,
                )[0]
            else:
                s = _equalize.smoothing_factors(
                    torch.maximum(lo.abs(), hi.abs()),
                    _equalize.weight_column_max(w, groups),
                    1.0 if absorbed or alpha == "auto" else float(alpha),
                )
            s = _equalize.stored_factors(s.to(s_old.device))
            self.weight.copy_(_equalize.scale_weight_columns(w, s, groups))
            s_old.copy_(s)
            iq.observer.reset()
            iq.observer.update(torch.stack([(lo / s).min(), (hi / s).max()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            if self.input_smoothing is not None:
                if self.input_quant.mode == "observe":
                    # The per-tensor range follows from the per-channel one in equalize_(),
                    # so the input quantizer does not see x; factors of 1 (a first
                    # calibration) leave x as it is.
                    self._observe_channels(x)
                    if not bool((self.input_smoothing == 1).all()):
                        x = self.smoothed_input(x)
                else:
                    s = self._factor_view(self.input_smoothing, x)
                    x = self.input_quant.quantize_divided(x, s)
            else:
                x = self.input_quant(x)
        w = self.quantized_weight()
        if self.inner is None:
            y = _layers.layer_forward(self.layer_kind, self.args, x, w, self.bias)
        else:
            y = _layers.call_own_forward(self.inner, x, w, self.bias)
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self) -> str:
        a = ", ".join(f"{k}={v}" for k, v in self.args.items())
        own = "" if self.inner is None else f", own_forward={type(self.inner).__name__}"
        return f"{a}, packed={self.packed}{own}"


@register_module("quant.conv1d")
class QuantConv1d(QuantLayer):
    """Conv1d with fake-quantized weights (and optionally inputs)."""

    layer_kind = "conv1d"


@register_module("quant.conv2d")
class QuantConv2d(QuantLayer):
    """Conv2d with fake-quantized weights (and optionally inputs)."""

    layer_kind = "conv2d"


@register_module("quant.conv3d")
class QuantConv3d(QuantLayer):
    """Conv3d with fake-quantized weights (and optionally inputs)."""

    layer_kind = "conv3d"


@register_module("quant.linear")
class QuantLinear(QuantLayer):
    """Linear with fake-quantized weights (and optionally inputs)."""

    layer_kind = "linear"


QUANT_CLASSES: dict[str, type[QuantLayer]] = {
    "conv1d": QuantConv1d,
    "conv2d": QuantConv2d,
    "conv3d": QuantConv3d,
    "linear": QuantLinear,
}
