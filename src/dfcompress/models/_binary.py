"""Binary building blocks: sign activations and 1-bit convolutions with 1-bit storage.

Both straight-through estimators are written as ``forward + (g - g.detach())``
rather than with a custom autograd function: the added term is exactly zero in
the forward pass (so outputs are bit-identical to the plain sign), it carries
the surrogate gradient backwards, and it scripts and exports like any tensor op.
Without autograd (``torch.no_grad``, inference, export) the term is left out.

For ONNX export both layers have an *integer-code* mode (:func:`int8_codes`):
the sign activation is written as the uint8 codes {0, 2} with scale 1 and zero
point 1 (``{-1, +1}``; zero padding stays 0), the weight as the int8 codes
{-1, +1} with the per-channel scale alpha. Both operands are exactly
representable, so ONNX Runtime's int8 convolution computes the same sums as the
float one, with weights stored in one byte instead of four.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError

__all__ = ["BinaryActivation", "BinaryConv2d", "Int8BinaryConv2d", "binary_sign", "int8_codes"]

#: Activations pass their gradient only where |x + bias| <= this bound.
ACTIVATION_CLIP = 1.5


def binary_sign(x: Tensor) -> Tensor:
    """Map to {-1, +1}: ``+1`` where ``x >= 0`` and ``-1`` elsewhere (zero maps to ``+1``).

    Unlike :func:`torch.sign` it never returns 0, so every value is one bit.

    >>> binary_sign(torch.tensor([-2.0, 0.0, 0.5])).tolist()
    [-1.0, 1.0, 1.0]
    """
    return (x >= 0).to(x.dtype) * 2 - 1


class BinaryActivation(nn.Module):
    """Learnable-bias sign activation: ``sign(x + b)`` with a per-channel bias ``b``.

    The backward pass uses the gradient of ``clamp(x + b, -1.5, 1.5)``: 1 where
    ``|x + b| <= 1.5`` and 0 elsewhere (the "hard tanh" straight-through
    estimator of ReActNet and BNext).

    Args:
        channels: number of input channels (size of the learnable bias).
        clip: the gradient passes where ``|x + b| <= clip``.

    >>> act = BinaryActivation(2)
    >>> x = torch.tensor([[[[-0.3]], [[2.0]]]], requires_grad=True)
    >>> act(x).flatten().tolist()
    [-1.0, 1.0]
    >>> act(x).sum().backward()
    >>> x.grad.flatten().tolist()
    [1.0, 0.0]
    """

    def __init__(self, channels: int, clip: float = ACTIVATION_CLIP) -> None:
        super().__init__()
        self.clip = float(clip)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.export_codes = False

    def forward(self, x: Tensor) -> Tensor:
        """Binarize ``x + bias`` to {-1, +1}."""
        if self.export_codes:
            # x + b >= 0 exactly when x >= -b (a float sum is 0 only when exactly 0)
            signs = torch.where(x >= -self.bias, 1.0, -1.0).to(x.dtype)
            return torch.fake_quantize_per_tensor_affine(signs, 1.0, 1, 0, 255)
        shifted = x + self.bias
        if not torch.is_grad_enabled():
            return binary_sign(shifted)
        surrogate = shifted.clamp(-self.clip, self.clip)
        return binary_sign(shifted) + (surrogate - surrogate.detach())


def _geometry(conv: BinaryConv2d | Int8BinaryConv2d) -> dict[str, int]:
    """The constructor arguments both binary convolutions share."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
    }


def _describe(conv: BinaryConv2d | Int8BinaryConv2d) -> str:
    g = _geometry(conv)
    return (
        f"{g['in_channels']}, {g['out_channels']}, kernel_size={g['kernel_size']}, "
        f"stride={g['stride']}, padding={g['padding']}"
    )


def _pack_bits(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Sign bits of ``weight`` (numpy ``packbits`` order) and its per-output-channel scale."""
    scale = weight.detach().abs().mean(dim=(1, 2, 3)).float()
    bits = (weight.detach() >= 0).flatten().cpu().numpy()
    packed = torch.from_numpy(np.packbits(bits, bitorder="big"))
    return packed.to(weight.device), scale.to(weight.device)


def _unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`_pack_bits` for the sign: a flat float tensor of {-1, +1}."""
    as_int = packed.to(torch.int32).unsqueeze(-1)
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.int32)
    bits = torch.div(as_int, torch.pow(2, shifts), rounding_mode="floor") % 2
    return bits.flatten()[:numel].to(torch.float32) * 2 - 1


@register_module("bnext.binary_conv2d")
class BinaryConv2d(nn.Module):
    """A convolution with 1-bit weights ``alpha * sign(w)``, alpha = mean ``abs(w)`` per channel.

    It is deliberately not an :class:`~torch.nn.Conv2d` subclass, so that
    selectors such as ``"conv"`` and float quantizers leave it alone; test for
    binary layers with ``isinstance(m, BinaryConv2d)``.

    Training keeps a latent float ``weight``; the forward pass convolves with
    ``alpha * sign(weight)`` (zero counts as +1) and the gradient reaches
    ``weight`` straight through the sign (identity) plus through ``alpha``.

    :meth:`pack` switches to 1-bit storage: the float weight is replaced by
    ``weight_bits``, a ``uint8`` buffer holding the sign bits of the weight
    flattened in C order (``out, in, kh, kw``) and packed eight per byte in
    :func:`numpy.packbits` order (first weight in the most significant bit,
    bit 1 = ``+1``, the last byte zero-padded), and ``weight_scale``, the float32
    alpha of each output channel. A packed layer gives exactly the same outputs
    and is inference-only.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding; ``None`` means ``kernel_size // 2``.

    >>> conv = BinaryConv2d(4, 2, 3)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> ref = conv(x)
    >>> packed = conv.pack()
    >>> packed.weight_bits.dtype, tuple(packed.weight_bits.shape)
    (torch.uint8, (9,))
    >>> torch.equal(packed(x), ref)
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise DfcompressError(f"{name}={value!r} is invalid: use an int >= {low}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.packed = False
        self.export_codes = False
        self._frozen: Tensor | None = None
        self.weight: nn.Parameter | None = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 1e-3
        )
        self.weight_bits: Tensor | None
        self.weight_scale: Tensor | None
        self.register_buffer("weight_bits", None)
        self.register_buffer("weight_scale", None)

    @property
    def weight_numel(self) -> int:
        """Number of binary weights (``out * in * k * k``)."""
        return self.out_channels * self.in_channels * self.kernel_size * self.kernel_size

    def binary_weight(self) -> Tensor:
        """The effective weight ``alpha * sign(w)`` used by the convolution."""
        shape = [self.out_channels, self.in_channels, self.kernel_size, self.kernel_size]
        w = self.weight
        if w is not None:
            alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
            return alpha * binary_sign(w) + (w - w.detach())
        bits, packed_alpha = self.weight_bits, self.weight_scale
        if bits is None or packed_alpha is None:
            raise DfcompressError("BinaryConv2d has neither a float weight nor packed bits")
        signs = _unpack_bits(bits, self.weight_numel).reshape(shape)
        return packed_alpha.reshape(-1, 1, 1, 1) * signs

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` with the binarized weight."""
        if self.training and self.weight is None:
            raise DfcompressError(
                "a packed BinaryConv2d is inference-only: call model.eval() "
                "(train the unpacked model, then pack it)"
            )
        frozen = self._frozen
        if self.export_codes and frozen is not None:
            return F.conv2d(x, frozen.to(x.dtype), None, self.stride, self.padding)
        return F.conv2d(x, self.binary_weight().to(x.dtype), None, self.stride, self.padding)

    def _set_codes(self, enabled: bool) -> None:
        """Freeze ``alpha * sign(w)`` into a plain tensor (or drop it).

        It is held outside the module's state, so tracing records it as a constant:
        the exported graph holds the binarized weight (one magnitude per output
        channel, which the ONNX rewrite stores as int8 codes), not the latent float
        weight and the ops that binarize it.
        """
        self.export_codes = enabled
        self._frozen = None
        if enabled:
            with torch.no_grad():
                self._frozen = self.binary_weight().detach().float().clone()

    def train(self, mode: bool = True) -> BinaryConv2d:
        """Set training mode; a packed layer refuses ``mode=True``."""
        if mode and self.packed:
            raise DfcompressError(
                "a packed BinaryConv2d is inference-only and cannot be put in training "
                "mode: train the unpacked model, then pack it"
            )
        return super().train(mode)

    def pack(self) -> BinaryConv2d:
        """Switch this layer to 1-bit storage in place (and eval mode); returns ``self``."""
        w = self.weight
        if w is None:
            return self
        bits, scale = _pack_bits(w)
        self.weight = None
        self.weight_bits = bits
        self.weight_scale = scale
        self.training = False
        self.packed = True
        return self

    def extra_repr(self) -> str:
        return f"{_describe(self)}, packed={self.packed}"

    def dfc_spec(self) -> dict[str, Any]:
        """Constructor arguments (JSON) for :func:`dfcompress.load`."""
        return {**_geometry(self), "packed": self.packed}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> BinaryConv2d:
        """An empty layer with the state-dict layout described by ``spec``."""
        args = dict(spec)
        packed = bool(args.pop("packed", False))
        module = cls(**args)
        if packed:
            module.weight = None
            module.weight_bits = torch.zeros((module.weight_numel + 7) // 8, dtype=torch.uint8)
            module.weight_scale = torch.zeros(module.out_channels)
            module.training = False
            module.packed = True
        return module


@register_module("bnext.int8_binary_conv2d")
class Int8BinaryConv2d(nn.Module):
    """A binary convolution and the BatchNorm after it, as ONNX Runtime's int8 kernel runs them.

    The ``"onnxruntime"`` target's eager form of a :class:`BinaryConv2d` that reads
    sign codes: the file folds the BatchNorm into the weight (each output channel
    ``+-s_c``, ``s_c = alpha_c * |gamma_c| / sqrt(var_c + eps)`` in float32), adds the
    folded bias as int32 codes of step ``s_c`` (the sign codes' scale is 1) and
    rounds the result to uint8 codes (QLinearConv has no float output). This layer
    holds that weight and that bias and rounds with ``output``, a calibrated
    fake quantizer, so it computes what the file computes. Built by
    :meth:`from_binary`; the BatchNorm it absorbed is replaced by an identity.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding.
        output: The output quantizer (a :class:`~dfcompress.quant.fake_quantizer.FakeQuantizer`).

    >>> from dfcompress.quant.config import IntQuant, PerTensor
    >>> from dfcompress.quant.fake_quantizer import FakeQuantizer
    >>> conv, bn = BinaryConv2d(4, 2, 3), nn.BatchNorm2d(2).eval()
    >>> fq = FakeQuantizer(IntQuant(8, PerTensor(), symmetric=False), (), mode="observe")
    >>> folded = Int8BinaryConv2d.from_binary(conv, bn, fq)
    >>> signs = torch.where(torch.arange(100.0).reshape(1, 4, 5, 5) % 3 > 0, 1.0, -1.0)
    >>> _ = folded(signs); fq.freeze()
    >>> ref = bn(conv(signs))
    >>> bool((folded(signs) - ref).abs().max() <= float(fq.scale))
    True
    """

    weight: Tensor
    bias: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output: nn.Module,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.register_buffer(
            "weight", torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
        )
        self.register_buffer("bias", torch.zeros(out_channels))
        self.output = output

    @classmethod
    @torch.no_grad()
    def from_binary(
        cls, conv: BinaryConv2d, norm: nn.BatchNorm2d | None, output: nn.Module
    ) -> Int8BinaryConv2d:
        """The folded layer of ``conv`` and the eval-mode ``norm`` after it (or None)."""
        from dfcompress.deploy._bias_grid import on_int32_grid

        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            output,
        )
        w = conv.binary_weight().detach().float()
        alpha = w.abs().amax(dim=(1, 2, 3))
        signs = torch.where(w >= 0, 1.0, -1.0)
        if norm is None:
            f = torch.ones(conv.out_channels, dtype=torch.float64)
            shift = torch.zeros(conv.out_channels, dtype=torch.float64)
        else:
            var = norm.running_var if norm.running_var is not None else torch.ones(1)
            mean = norm.running_mean if norm.running_mean is not None else torch.zeros(1)
            gamma = norm.weight if norm.weight is not None else torch.ones(1)
            beta = norm.bias if norm.bias is not None else torch.zeros(1)
            f = (gamma.double() / torch.sqrt(var.double() + norm.eps)).expand(conv.out_channels)
            shift = (beta.double() - mean.double() * f).expand(conv.out_channels)
        # float32 scales and bias computed in float64, as the ONNX BatchNorm fold does
        scale = (alpha.double() * f.abs()).float()
        flip = torch.where(f < 0, -1.0, 1.0).float().reshape(-1, 1, 1, 1)
        layer.weight.copy_(signs * flip * scale.reshape(-1, 1, 1, 1))
        layer.bias.copy_(on_int32_grid(shift.float(), scale))
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Convolve the sign codes ``x``, add the bias, round to the output codes.

        With a fixed output quantizer, in eager mode, the rounding is the int8
        kernel's own: the integer sum plus the bias codes, in float32, times the
        float32 multiplier ``s_c / s_y``, rounded half to even (a float convolution
        followed by ``/ s_y`` rounds values near a half the other way now and then,
        and a binary network's values sit on halves often: it sums small integers).
        """
        from dfcompress.quant.fake_quantizer import FakeQuantizer, exporting

        fq = self.output
        exact = isinstance(fq, FakeQuantizer) and fq.mode == "fixed" and fq.zero_point is not None
        if exporting() or not exact or x.dtype != torch.float32:
            y = F.conv2d(
                x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding
            )
            out: Tensor = fq(y)
            return out
        assert isinstance(fq, FakeQuantizer)
        step = self.weight.abs().amax(dim=(1, 2, 3))
        step = torch.where(step > 0, step, torch.full_like(step, 1e-12))
        codes = torch.sign(self.weight)
        acc = F.conv2d(x, codes, None, self.stride, self.padding)  # integers: exact
        acc = acc + torch.round(self.bias.double() / step.double()).float().reshape(1, -1, 1, 1)
        s_y = fq.scale.reshape(()).float()
        z = fq.zero_point_int32().reshape(()).float()
        v = acc * (step / s_y).reshape(1, -1, 1, 1)
        q = torch.clamp(torch.round(v), fq.qmin - z, fq.qmax - z)
        return q * s_y

    def extra_repr(self) -> str:
        return _describe(self)

    def dfc_spec(self) -> dict[str, Any]:
        """Constructor arguments (JSON) for :func:`dfcompress.load`."""
        from dfcompress.quant.config import config_to_dict

        return {**_geometry(self), "output": config_to_dict(self.output.config)}

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> Int8BinaryConv2d:
        """An empty layer (fixed output quantizer) with the layout described by ``spec``."""
        from dfcompress.quant.config import IntQuant, config_from_dict
        from dfcompress.quant.fake_quantizer import FakeQuantizer

        args = dict(spec)
        config = config_from_dict(args.pop("output"))
        if not isinstance(config, IntQuant):
            raise DfcompressError(f"output={config!r} is not an integer quantizer config")
        return cls(**args, output=FakeQuantizer(config, (), mode="fixed"))


def int8_codes(model: nn.Module, enabled: bool = True) -> int:
    """Switch the binary layers of ``model`` (in place) to or from integer-code export.

    In code mode, :class:`BinaryActivation` outputs fake-quantized uint8 codes
    (scale 1, zero point 1) and :class:`BinaryConv2d` fake-quantized int8 weights
    {-1, +1} with scale alpha; outputs are unchanged, and the ONNX exporter writes
    them as QuantizeLinear/DequantizeLinear pairs that run as int8 convolutions.
    :func:`dfcompress.export_onnx` does this on its own copy of the model.

    Args:
        model: Any model; only its binary layers are touched.
        enabled: True for code mode, False for the normal float forward.

    Returns:
        The number of :class:`BinaryConv2d` layers switched (an
        :class:`Int8BinaryConv2d`, which reads codes already, counts as one).

    >>> net = nn.Sequential(BinaryActivation(2), BinaryConv2d(2, 3, 3)).eval()
    >>> x = torch.randn(1, 2, 4, 4)
    >>> ref = net(x)
    >>> int8_codes(net)
    1
    >>> torch.allclose(net(x), ref, atol=1e-6)
    True
    """
    n = 0
    for m in model.modules():
        if isinstance(m, BinaryActivation):
            m.export_codes = bool(enabled)
        elif isinstance(m, BinaryConv2d):
            m._set_codes(bool(enabled))
            n += 1
        elif isinstance(m, Int8BinaryConv2d):
            n += 1
    return n
