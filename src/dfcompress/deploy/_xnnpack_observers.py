"""dfcompress's observers in the PT2E quantization flow (the ranges XNNPACK's int8 ops get).

PT2E inserts an observer module wherever ExecuTorch's XNNPACK quantizer
annotates a tensor and turns it into a quantize/dequantize pair on convert,
from the observer's ``calculate_qparams()``. :class:`PT2EObserver` is such a
module whose statistics and ranges are dfcompress's own
(:mod:`dfcompress.quant.observers`): min/max, moving average, percentile or
the MSE search of the clipping range.

XNNPACK's codes: activations int8 ``[-128, 127]`` asymmetric per tensor,
weights int8 ``[-127, 127]`` symmetric per output channel (zero point 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torchao.quantization.pt2e.observer import UniformQuantizationObserverBase

from dfcompress.errors import DfcompressError
from dfcompress.quant.observers import MSE, MinMax, MovingAverageMinMax, Observer, Percentile

__all__ = ["ACT_RANGE", "OBSERVERS", "WEIGHT_RANGE", "PT2EObserver", "dfc_observer"]

ACT_RANGE = (-128, 127)
WEIGHT_RANGE = (-127, 127)
OBSERVERS = ("minmax", "moving_average", "percentile", "mse")


def dfc_observer(
    name: str, qmin: int, qmax: int, symmetric: bool, axis: int | None, percentile: float = 99.99
) -> Observer:
    """The dfcompress observer called ``name`` for the code range ``[qmin, qmax]``.

    >>> type(dfc_observer("mse", -128, 127, False, None)).__name__
    'MSE'
    """
    args = (qmin, qmax, symmetric, axis)
    if name == "minmax":
        return MinMax(*args)
    if name == "moving_average":
        return MovingAverageMinMax(*args)
    if name == "percentile":
        return Percentile(*args, percentile=percentile)
    if name == "mse":
        return MSE(*args)
    raise DfcompressError(
        f"observer={name!r} cannot give static XNNPACK ranges: use one of {', '.join(OBSERVERS)}"
    )


class PT2EObserver(UniformQuantizationObserverBase):  # type: ignore[misc]
    """A PT2E observer module computing its range with a dfcompress observer.

    Args:
        method: Name of the dfcompress observer (``"minmax"``, ``"moving_average"``,
            ``"percentile"``, ``"mse"``).
        dtype: The code type (``torch.int8``).
        qscheme: ``torch.per_tensor_affine`` (activations) or
            ``torch.per_channel_symmetric`` (weights).
        quant_min: Smallest code.
        quant_max: Largest code.
        ch_axis: Channel axis of per-channel schemes.
        percentile: Percentile of the ``"percentile"`` observer.
        **kwargs: Accepted (and ignored) for the constructor's PT2E arguments (``eps``).

    >>> obs = PT2EObserver("minmax", quant_min=-128, quant_max=127)
    >>> _ = obs(torch.tensor([-1.0, 3.0]))
    >>> scale, zero_point = obs.calculate_qparams()
    >>> round(float(scale), 5), int(zero_point)
    (0.01569, -64)
    """

    def __init__(
        self,
        method: str = "minmax",
        dtype: torch.dtype = torch.int8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        quant_min: int = ACT_RANGE[0],
        quant_max: int = ACT_RANGE[1],
        ch_axis: int = 0,
        percentile: float = 99.99,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("eps", None)
        super().__init__(dtype=dtype, qscheme=qscheme, quant_min=quant_min, quant_max=quant_max)
        self.ch_axis = ch_axis
        per_channel = qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        symmetric = qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        self.observer = dfc_observer(
            method, quant_min, quant_max, symmetric, ch_axis if per_channel else None, percentile
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` and return it unchanged."""
        if x.numel():
            self.observer.update(x.detach())
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the data seen: float32 and int32 tensors."""
        scale, zero_point = self.observer.qparams()
        return scale.to(torch.float32), zero_point.to(torch.int32)

    def extra_repr(self) -> str:
        return f"{type(self.observer).__name__}, [{self.quant_min}, {self.quant_max}]"
