"""CastConv1d/2d/3d and CastLinear: conv/linear layers held in float16 or bfloat16.

The input is cast to the layer's dtype and the output back to the input's
dtype, so cast layers mix freely with float32 ones (BatchNorm, a kept head).
A layer whose class overrides ``forward`` is kept inside as ``inner`` (cast too)
and its own forward runs with the cast weight and bias.

>>> from torch import nn
>>> c = CastLinear.from_float(nn.Linear(8, 2), torch.float16)
>>> c.weight.dtype, c(torch.randn(3, 8)).dtype
(torch.float16, torch.float32)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dfcompress._rebuild import register_module
from dfcompress.errors import DfcompressError
from dfcompress.quant import _layers
from dfcompress.quant.fake_quantizer import exporting

__all__ = ["CastConv1d", "CastConv2d", "CastConv3d", "CastLayer", "CastLinear"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise DfcompressError(f"dtype {dtype} is not supported: use torch.float16 or torch.bfloat16")


class CastLayer(nn.Module):
    """Common machinery of the cast wrappers (use the concrete classes)."""

    layer_kind: ClassVar[str]
    bias: nn.Parameter | None
    inner: nn.Module | None

    def __init__(self, args: dict[str, Any], dtype: torch.dtype) -> None:
        super().__init__()
        self.args = dict(args)
        _layers.mirror_attrs(self, self.args)
        self.dtype_name = _dtype_name(dtype)
        self.dtype = dtype
        shape = _layers.weight_shape(self.layer_kind, args)
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype))
        out = _layers.out_features(self.layer_kind, args)
        self.bias = nn.Parameter(torch.zeros(out, dtype=dtype)) if args["bias"] else None
        # The original layer when its class has its own forward (without its weight/bias).
        self.inner = None

    @classmethod
    def from_float(cls, module: nn.Module, dtype: torch.dtype, name: str = "") -> CastLayer:
        """A cast copy of a float conv/linear layer."""
        if _layers.layer_kind(module) != cls.layer_kind:
            raise DfcompressError(
                f"{cls.__name__} cannot wrap {name or '?'}: a {type(module).__name__}"
            )
        c = cls(_layers.layer_args(module), dtype)
        with torch.no_grad():
            w = module.weight
            if not isinstance(w, torch.Tensor):
                raise DfcompressError(f"layer {name or '?'} has no weight tensor")
            c.weight = nn.Parameter(w.detach().to(dtype), requires_grad=w.requires_grad)
            b = module.bias
            if isinstance(b, torch.Tensor) and c.bias is not None:
                c.bias = nn.Parameter(b.detach().to(dtype), requires_grad=b.requires_grad)
        if _layers.has_own_forward(module):
            _layers.detach_parameters(module)
            c.inner = module.to(dtype)
        return c.to(w.device)

    def dfc_spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (for :func:`dfcompress.save`)."""
        spec = {"args": self.args, "dtype": self.dtype_name}
        if self.inner is not None:
            spec["own_forward"] = _layers.class_ref(self.inner)
        return spec

    @classmethod
    def dfc_from_spec(cls, spec: dict[str, Any]) -> CastLayer:
        """An empty layer with the same state-dict structure."""
        if spec.get("dtype") not in _DTYPES:
            raise DfcompressError(f"unknown dtype {spec.get('dtype')!r}: use float16 or bfloat16")
        return cls(spec["args"], _DTYPES[spec["dtype"]])

    def dfc_adopt(self, spec: dict[str, Any], current: nn.Module | None) -> None:
        """On load: keep the constructor's layer as ``inner`` when ``spec`` ran its own forward."""
        if "own_forward" in spec:
            inner = _layers.adopt_own_forward(
                self.layer_kind, spec["own_forward"], current, type(self).__name__
            )
            self.inner = inner.to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is None and x.device.type == "cpu" and not exporting():
            # CPUs without 16-bit arithmetic (and ONNX Runtime's CPU kernels) round the
            # input, weight and output to 16 bits and accumulate in float32; PyTorch's
            # 16-bit CPU convolutions compute the same far more slowly.
            b = None if self.bias is None else self.bias.float()
            xr = x.to(self.dtype).float()
            y = _layers.layer_forward(self.layer_kind, self.args, xr, self.weight.float(), b)
            return y.to(self.dtype).to(x.dtype)
        if self.inner is None:
            y = _layers.layer_forward(
                self.layer_kind, self.args, x.to(self.dtype), self.weight, self.bias
            )
        else:
            y = _layers.call_own_forward(self.inner, x.to(self.dtype), self.weight, self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype_name}, " + ", ".join(f"{k}={v}" for k, v in self.args.items())


@register_module("quant.cast_conv1d")
class CastConv1d(CastLayer):
    """Conv1d held in float16/bfloat16."""

    layer_kind = "conv1d"


@register_module("quant.cast_conv2d")
class CastConv2d(CastLayer):
    """Conv2d held in float16/bfloat16."""

    layer_kind = "conv2d"


@register_module("quant.cast_conv3d")
class CastConv3d(CastLayer):
    """Conv3d held in float16/bfloat16."""

    layer_kind = "conv3d"


@register_module("quant.cast_linear")
class CastLinear(CastLayer):
    """Linear held in float16/bfloat16."""

    layer_kind = "linear"


CAST_CLASSES: dict[str, type[CastLayer]] = {
    "conv1d": CastConv1d,
    "conv2d": CastConv2d,
    "conv3d": CastConv3d,
    "linear": CastLinear,
}
