"""FakeQuantizer: the module that quantizes one tensor (a weight or a layer's input).

It holds its frozen parameters as buffers (``scale`` and, for asymmetric
configs, ``zero_point``) so they are saved with the model and readable by an
exporter, plus an observer used while the parameters are not frozen. Its
``mode`` says what ``forward`` does:

- ``"track"``: derive the parameters from the tensor itself (weights before
  ``convert``; recomputed only when the weight changes);
- ``"observe"``: feed the observer and return the input unchanged (calibration);
- ``"fixed"``: fake-quantize with the frozen buffers;
- ``"dynamic"``: derive the parameters from each tensor, at every call;
- ``"off"``: return the input unchanged (an input quantizer not calibrated yet).

For per-tensor and per-channel granularity the op is
:func:`torch.fake_quantize_per_tensor_affine` /
:func:`torch.fake_quantize_per_channel_affine` (identical to
:func:`dfcompress.quant.functional.fake_quantize`, and exported by ONNX as
QuantizeLinear/DequantizeLinear).

>>> from dfcompress.quant.config import IntQuant, PerTensor
>>> fq = FakeQuantizer(IntQuant(8, PerTensor(), symmetric=False), ())
>>> fq.mode = "observe"; _ = fq(torch.linspace(-1.0, 3.0, 11)); fq.freeze()
>>> fq.mode, round(float(fq.scale), 5), int(fq.zero_point)
('fixed', 0.01569, 64)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.quant.config import IntQuant
from dfcompress.quant.functional import fake_quantize, storage_dtype
from dfcompress.quant.observers import Observer, make_observer

__all__ = ["FakeQuantizer", "Mode", "exporting", "fits_half"]

Mode = Literal["track", "observe", "fixed", "dynamic", "off"]
_MODES = ("track", "observe", "fixed", "dynamic", "off")


def exporting() -> bool:
    """Whether the model is being traced, scripted, compiled or exported to ONNX."""
    return bool(
        torch._C._get_tracing_state() is not None
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _fast_fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """PyTorch's arithmetic in a few in-place passes, for inference.

    The fused kernel also builds the gradient mask and is several times slower
    on CPU. Since the clamp bounds are integers, clamping before rounding gives
    the same codes, and ``(q - z) * s`` is then ``round(clamp(x / s, qmin - z,
    qmax - z)) * s``. Adding and subtracting 1.5 * 2**23 rounds a float32 of
    magnitude below 2**22 to the nearest integer, ties to even, exactly.
    """
    inv_s = 1.0 / scale
    t = torch.mul(x, inv_s)
    if zp.numel() == 1 or not bool(zp.any()):
        z = int(zp.reshape(-1)[0])
        t.clamp_(qmin - z, qmax - z)  # scalar bounds: a much faster kernel
    else:
        zf = zp.to(torch.float32)
        t.clamp_(qmin - zf, qmax - zf)
    return t.add_(_MAGIC).sub_(_MAGIC).mul_(scale)


_MAGIC = 12582912.0  # 1.5 * 2**23
_ONNX_RANGES = ((0, 255), (-128, 127), (0, 127))


def _inference_only(x: torch.Tensor) -> bool:
    """Whether ``x`` needs neither a gradient nor a traceable graph (in-place fast paths)."""
    return not (torch.is_grad_enabled() and x.requires_grad) and not exporting()


def fits_half(scale: torch.Tensor) -> bool:
    """Whether every scale lies in float16's normal range (full 11-bit precision).

    >>> fits_half(torch.tensor([1e-3, 2.0])), fits_half(torch.tensor([1e-6]))
    (True, False)
    """
    a = scale.detach().abs().to(torch.float32)
    return bool(((a >= 2.0**-14) & (a <= 6.0e4)).all())


class FakeQuantizer(nn.Module):
    """Quantize-dequantize one tensor with a straight-through gradient.

    Args:
        config: The integer config (bits, symmetry, observer).
        qshape: Shape of the scale: ``()`` per tensor, ``(C,)`` per channel,
            ``(out, groups)`` per group.
        axis: Channel axis (per channel) or None.
        group_size: Group size along dim 1 (per group) or None.
        mode: Initial mode (see the module docs).
        scale_dtype: Storage dtype of ``scale`` (float16 halves the cost of
            per-group scales in packed storage; computation is in float32).
        restricted: Symmetric scales put the largest magnitude on ``qmax``
            (weights; see :func:`~dfcompress.quant.functional.calc_qparams`).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor | None

    def __init__(
        self,
        config: IntQuant,
        qshape: tuple[int, ...],
        axis: int | None = None,
        group_size: int | None = None,
        mode: Mode = "off",
        scale_dtype: torch.dtype = torch.float32,
        restricted: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.bits = config.bits
        self.qmin, self.qmax = config.qrange
        self.symmetric = config.symmetric
        self.axis, self.group_size = axis, group_size
        self.register_buffer("scale", torch.ones(qshape, dtype=scale_dtype))
        if self.symmetric:
            self.zero_point = None
        else:
            zp = torch.full(qshape, (self.qmin + self.qmax + 1) // 2, dtype=torch.int32)
            self.register_buffer("zero_point", zp.to(storage_dtype(self.qmin, self.qmax)))
        self.observer: Observer = make_observer(config, axis, group_size, restricted)
        if config.observer == "dynamic" and mode in ("track", "off"):
            mode = "dynamic"
        self.mode: Mode = mode
        self._key: tuple[int, int, int] | None = None
        #: Round scales derived by :meth:`track` to float16 values when all of them
        #: lie in float16's normal range (weights: halves the cost of stored scales).
        self.half_scales = False

    @property
    def mode(self) -> Mode:
        """What ``forward`` does; see the module docs."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in _MODES:
            raise DfcompressError(f"mode={value!r} is unknown: use one of {', '.join(_MODES)}")
        if value == "observe":
            self.observer.reset()
        self._mode = value

    def zero_point_int32(self) -> torch.Tensor:
        """The zero point as int32 (zeros for symmetric configs)."""
        if self.zero_point is None:
            return torch.zeros(self.scale.shape, dtype=torch.int32, device=self.scale.device)
        return self.zero_point.to(torch.int32)

    def _set(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape))
            if self.zero_point is not None:
                self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    def track(self, x: torch.Tensor) -> None:
        """Set the parameters from ``x`` alone (no-op if ``x`` is unchanged since last time)."""
        key = (x.data_ptr(), x._version, id(x))
        if key == self._key:
            return
        self.observer.reset()
        self.observer.update(x)
        scale, zero_point = self.observer.qparams()
        if self.half_scales and fits_half(scale):
            scale = scale.to(torch.float16).to(torch.float32)
        self._set(scale, zero_point)
        self._key = key

    def freeze(self) -> None:
        """Freeze the parameters: from the observer after ``"observe"``, else as they are."""
        if self.mode == "dynamic":
            return
        if self.mode == "observe":
            if not self.observer.ready:
                raise DfcompressError(
                    "an input quantizer saw no data during calibration: its layer is not "
                    "reached by the model's forward, or the calibration data is empty"
                )
            self._set(*self.observer.qparams())
        elif self.mode == "off":
            raise DfcompressError("cannot freeze an input quantizer that was never calibrated")
        self.mode = "fixed"

    def quantize_with(
        self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        """Fake-quantize ``x`` with the given parameters and this quantizer's range."""
        zp = zero_point.to(torch.int32)
        scale = scale.to(torch.float32)
        if self.group_size is None and x.dtype == torch.float32:
            if _inference_only(x):
                if self.axis is None:
                    return _fast_fake_quantize(
                        x, scale.reshape(()), zp.reshape(()), self.qmin, self.qmax
                    )
                shape = [1] * x.dim()
                shape[self.axis % x.dim()] = -1
                return _fast_fake_quantize(
                    x, scale.reshape(shape), zp.reshape(shape), self.qmin, self.qmax
                )
            qmin, qmax = self.qmin, self.qmax
            if exporting() and (qmin, qmax) not in _ONNX_RANGES:
                x, qmin, qmax = self._widened(x, scale, zp)
            if self.axis is None:
                return torch.fake_quantize_per_tensor_affine(
                    x, scale.reshape(()), zp.reshape(()), qmin, qmax
                )
            return torch.fake_quantize_per_channel_affine(
                x, scale.reshape(-1), zp.reshape(-1), self.axis % x.dim(), qmin, qmax
            )
        return fake_quantize(x, scale, zp, self.qmin, self.qmax, self.axis, self.group_size)

    def _widened(
        self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor
    ) -> tuple[torch.Tensor, int, int]:
        """``x`` clipped to this quantizer's range, and the 8-bit range holding it.

        ONNX quantizes to full 8-bit ranges only; the codes of a narrower one (7-bit
        weights) are the same codes in the 8-bit range once ``x`` is clipped to it.
        """
        wide = (-128, 127) if self.qmin < 0 else (0, 255)
        if not (wide[0] <= self.qmin and self.qmax <= wide[1]):
            return x, self.qmin, self.qmax  # ONNX's exporter names the range it refuses
        shape = [1] * x.dim()
        if self.axis is not None:
            shape[self.axis % x.dim()] = -1
        s, z = scale.reshape(shape), zp.to(torch.float32).reshape(shape)
        return torch.clamp(x, (self.qmin - z) * s, (self.qmax - z) * s), wide[0], wide[1]

    def quantize_divided(self, x: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
        """``self(x / divisor)``; frozen per-tensor inference does it in one fused pass.

        The division folds into the reciprocal scale: ``round(x * (1 / (d * s)))``
        costs what quantizing ``x`` alone does (it may differ from dividing first
        by one rounding of the product, at exact ties only).
        """
        fast = (
            self.mode == "fixed"
            and self.axis is None
            and self.group_size is None
            and x.dtype == torch.float32
            and _inference_only(x)
        )
        a = self.scale.to(torch.float32).reshape(())
        if not fast:
            if self._same_as_eager(x):
                # Traced for TorchScript (or compiled): the eager arithmetic, out of place,
                # so the saved program rounds exactly where the eager model does.
                z = int(self.zero_point_int32().reshape(-1)[0])
                t = torch.clamp(x * (1.0 / (divisor * a)), self.qmin - z, self.qmax - z)
                return torch.round(t) * a
            out: torch.Tensor = self(x / divisor)
            return out
        z = int(self.zero_point_int32().reshape(-1)[0])
        t = torch.mul(x, 1.0 / (divisor * a))
        t.clamp_(self.qmin - z, self.qmax - z)
        return t.add_(_MAGIC).sub_(_MAGIC).mul_(a)

    def _same_as_eager(self, x: torch.Tensor) -> bool:
        """Whether a frozen per-tensor ``quantize_divided`` may follow the eager arithmetic.

        True while tracing or compiling without gradients, but not for ONNX, whose
        graph needs the QuantizeLinear/DequantizeLinear pair.
        """
        return (
            self.mode == "fixed"
            and self.axis is None
            and self.group_size is None
            and x.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.onnx.is_in_onnx_export()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "off":
            return x
        if mode == "observe":
            self.observer.update(x)
            return x
        if mode == "track":
            self.track(x)
        elif mode == "dynamic":
            self.observer.reset()
            self.observer.update(x)
            s, z = self.observer.qparams()
            return self.quantize_with(x, s, z)
        return self.quantize_with(x, self.scale, self.zero_point_int32())

    def extra_repr(self) -> str:
        gran = (
            f"group_size={self.group_size}"
            if self.group_size is not None
            else ("per_tensor" if self.axis is None else f"axis={self.axis}")
        )
        sym = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {gran}, {sym}, observer={self.config.observer}, mode={self.mode}"
