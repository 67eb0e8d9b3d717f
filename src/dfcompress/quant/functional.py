"""Pure fake-quantization ops with a straight-through estimator.

Every op follows PyTorch's own convention, so that 8-bit results equal
:func:`torch.fake_quantize_per_tensor_affine` and
:func:`torch.fake_quantize_per_channel_affine` exactly::

    inv_s = 1 / scale                       (a float32 reciprocal)
    q     = clamp(round(x * inv_s) + z, qmin, qmax)   (round half to even)
    x_hat = (q - z) * scale

Granularity is given by the shape of ``scale``/``zero_point`` together with
``axis`` and ``group_size``:

- per tensor: ``axis=None, group_size=None``, scale of shape ``()`` or ``(1,)``;
- per channel: ``axis=a``, scale of shape ``(x.shape[a],)``;
- per group: ``group_size=g``, groups of ``g`` consecutive entries along dim 1
  (the input axis of conv/linear weights), scale of shape ``(x.shape[0], x.shape[1] // g)``.

The gradient is the straight-through estimator: 1 where ``x`` falls inside the
clamp range, 0 outside.

>>> x = torch.tensor([-1.0, 0.26, 3.0], requires_grad=True)
>>> y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0), -8, 7)
>>> y.detach()
tensor([-0.8000,  0.3000,  0.7000])
>>> y.sum().backward()
>>> x.grad  # 1 inside [-0.8, 0.7], 0 where clamped
tensor([0., 1., 0.])
"""

from __future__ import annotations

from typing import Any

import torch

from dfcompress.errors import DfcompressError

__all__ = [
    "calc_qparams",
    "check_bits",
    "dequantize",
    "fake_quantize",
    "int_range",
    "quantize",
    "storage_dtype",
]

_EPS = float(torch.finfo(torch.float32).eps)


def check_bits(bits: int) -> int:
    """Validate a bit width (2..16) and return it.

    >>> check_bits(4)
    4
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise DfcompressError(f"bits={bits!r} is out of range: use an integer in 2..16")
    return bits


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-wide signed or unsigned integer.

    >>> int_range(8, signed=True), int_range(4, signed=False)
    ((-128, 127), (0, 15))
    """
    check_bits(bits)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype that holds ``[qmin, qmax]``.

    >>> storage_dtype(-128, 127), storage_dtype(0, 255), storage_dtype(0, 65535)
    (torch.int8, torch.uint8, torch.int32)
    """
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    raise DfcompressError(f"integer range [{qmin}, {qmax}] does not fit in 32 bits")


def _check_range(qmin: int, qmax: int) -> None:
    if qmin >= qmax:
        raise DfcompressError(f"qmin={qmin} must be smaller than qmax={qmax}")


def _shape_params(
    x: torch.Tensor, p: torch.Tensor, axis: int | None, group_size: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape ``x`` and broadcast ``p`` for the granularity; returns (x_view, p_view)."""
    if axis is not None and group_size is not None:
        raise DfcompressError("give either axis (per channel) or group_size (per group), not both")
    if group_size is not None:
        if x.dim() < 2:
            raise DfcompressError(
                f"per-group quantization needs a tensor of >= 2 dims, got {x.dim()}"
            )
        if group_size < 1 or x.shape[1] % group_size:
            raise DfcompressError(
                f"group_size={group_size} does not divide dim 1 of size {x.shape[1]}: "
                "use a divisor of the input size"
            )
        n_groups = x.shape[1] // group_size
        xv = x.reshape(x.shape[0], n_groups, group_size, -1)
        if p.numel() != x.shape[0] * n_groups:
            raise DfcompressError(
                f"{what} has {p.numel()} entries; per-group needs {x.shape[0]}x{n_groups}"
            )
        return xv, p.reshape(x.shape[0], n_groups, 1, 1)
    if axis is not None:
        ax = axis % x.dim() if x.dim() else 0
        if p.numel() != x.shape[ax]:
            raise DfcompressError(
                f"{what} has {p.numel()} entries; per-channel on axis {axis} needs {x.shape[ax]}"
            )
        shape = [1] * x.dim()
        shape[ax] = -1
        return x, p.reshape(shape)
    if p.numel() != 1:
        raise DfcompressError(f"{what} has {p.numel()} entries; per-tensor needs 1")
    return x, p.reshape(())


def _q(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    # PyTorch's convention: reciprocal in float32, round the product (ties to
    # even), add the zero point after rounding.
    inv_s = 1.0 / scale.to(torch.float32)
    return torch.clamp(
        torch.round(x.to(torch.float32) * inv_s) + zero_point.to(torch.float32), qmin, qmax
    )


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qmin: int,
        qmax: int,
    ) -> torch.Tensor:
        inv_s = 1.0 / scale.to(torch.float32)
        zf = zero_point.to(torch.float32)
        r = torch.round(x.to(torch.float32) * inv_s) + zf
        ctx.save_for_backward((r >= qmin) & (r <= qmax))
        q = torch.clamp(r, qmin, qmax)
        return ((q - zf) * scale.to(torch.float32)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        return grads[0] * mask, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """Quantize and dequantize ``x``; the gradient passes straight through inside the range.

    Args:
        x: Any floating tensor.
        scale: Positive step size(s), shaped per granularity (see the module docs).
        zero_point: Integer offset(s), same shape as ``scale``.
        qmin: Smallest integer code.
        qmax: Largest integer code.
        axis: Channel axis for per-channel quantization.
        group_size: Group size along dim 1 for per-group quantization.

    Returns:
        A tensor of ``x``'s shape and dtype holding values of the form ``(q - z) * scale``.

    >>> w = torch.tensor([[0.5, -0.5], [1.0, 4.0]], requires_grad=True)
    >>> y = fake_quantize(w, torch.tensor([0.25, 0.5]), torch.tensor([0, 0]), -4, 3, axis=0)
    >>> y.detach()
    tensor([[ 0.5000, -0.5000],
            [ 1.0000,  1.5000]])
    >>> y.sum().backward(); w.grad
    tensor([[1., 1.],
            [1., 0.]])
    """
    _check_range(qmin, qmax)
    xv, s = _shape_params(x, scale, axis, group_size, "scale")
    _, z = _shape_params(x, zero_point, axis, group_size, "zero_point")
    out: torch.Tensor = _FakeQuantSTE.apply(xv, s, z, qmin, qmax)  # type: ignore[no-untyped-call]
    return out.reshape(x.shape)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """The integer codes of ``x`` in the smallest integer dtype holding ``[qmin, qmax]``.

    >>> quantize(torch.tensor([0.05, 0.15, -9.0]), torch.tensor(0.1), torch.tensor(0), -128, 127)
    tensor([  0,   2, -90], dtype=torch.int8)
    """
    _check_range(qmin, qmax)
    xv, s = _shape_params(x, scale, axis, group_size, "scale")
    _, z = _shape_params(x, zero_point, axis, group_size, "zero_point")
    return _q(xv, s, z, qmin, qmax).reshape(x.shape).to(storage_dtype(qmin, qmax))


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Real values ``(q - z) * scale`` of integer codes ``q``.

    >>> q = torch.tensor([0, 2, 255], dtype=torch.uint8)
    >>> dequantize(q, torch.tensor(0.5), torch.tensor(128))
    tensor([-64.0000, -63.0000,  63.5000])
    """
    qv, s = _shape_params(q, scale, axis, group_size, "scale")
    _, z = _shape_params(q, zero_point, axis, group_size, "zero_point")
    out = (qv.to(torch.float32) - z.to(torch.float32)) * s.to(torch.float32)
    return out.reshape(q.shape).to(dtype)


def calc_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    restricted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[min_val, max_val]`` (widened to include 0) onto the codes.

    A zero range (a constant-zero tensor) gives the float32 epsilon as scale,
    never zero. NaN or Inf statistics raise :class:`DfcompressError`.

    Symmetric scales spread ``max(|min|, |max|)`` over half the code range
    (``/ 127.5`` at 8 bits), PyTorch's convention for activations. With
    ``restricted`` the largest magnitude maps onto ``qmax`` itself (``/ 127``,
    ``/ 7`` at 4 bits; the code ``qmin`` stays unused): every value, the
    largest included, is then rounded to its nearest code instead of the
    largest being clipped by half a step towards zero. Weights use it.

    Args:
        min_val: Observed minimum (any shape; one entry per channel or group).
        max_val: Observed maximum, same shape.
        qmin: Smallest integer code.
        qmax: Largest integer code.
        symmetric: Centre the range on 0 (the zero point is the middle code).
        restricted: Symmetric only: the largest magnitude is exactly ``qmax`` codes.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of ``min_val``'s shape.

    >>> calc_qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    (tensor(0.0157), tensor(64, dtype=torch.int32))
    >>> calc_qparams(torch.tensor(-1.0), torch.tensor(3.0), -128, 127, symmetric=True)
    (tensor(0.0235), tensor(0, dtype=torch.int32))
    >>> float(calc_qparams(torch.tensor(-1.0), torch.tensor(3.0), -8, 7, True, restricted=True)[0])
    0.4285714328289032
    """
    _check_range(qmin, qmax)
    mn = torch.as_tensor(min_val, dtype=torch.float32)
    mx = torch.as_tensor(max_val, dtype=torch.float32)
    if not (torch.isfinite(mn).all() and torch.isfinite(mx).all()):
        raise DfcompressError(
            "cannot compute quantization parameters from NaN or Inf statistics: "
            "check the calibration data and the model's outputs for non-finite values"
        )
    mn = torch.clamp(mn, max=0.0)
    mx = torch.clamp(mx, min=0.0)
    if symmetric:
        amax = torch.maximum(-mn, mx)
        scale = amax / (qmax if restricted else (qmax - qmin) / 2)
        zp = torch.full_like(scale, float((qmin + qmax + 1) // 2))
        scale = torch.clamp(scale, min=_EPS)
    else:
        scale = torch.clamp((mx - mn) / (qmax - qmin), min=_EPS)
        zp = torch.clamp(qmin - torch.round(mn / scale), qmin, qmax)
    return scale, zp.to(torch.int32)
