"""NPR: neighbouring pixel relationships, the up-sampling trace of generated images.

For a window of ``l x l`` pixels and a reference pixel ``j = a * l + b`` of that
window, NPR subtracts from every pixel the reference pixel of its window::

    ref(x)[p, q] = x[l * floor(p / l) + a, l * floor(q / l) + b]
    NPR(x) = scale * (x - ref(x))

``l = 2, j = 0`` is the published NPR (Tan et al., CVPR 2024): ``x`` minus the
nearest-neighbour up-sampling of ``x[..., ::2, ::2]``, so the top-left pixel of
every 2x2 window becomes 0. With ``pixel="max"`` the reference is the window's
maximum, ``x - nearest_up(maxpool_l(x))``. Up-sampling layers of generators
(nearest, bilinear, transposed conv) leave correlations between neighbouring
pixels that these differences expose.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

from dfcompress.errors import DfcompressError
from dfcompress.features._validate import check_image

__all__ = ["NPR"]


class NPR(nn.Module):
    """Neighbouring-pixel-relationship features of an image batch (same channels out).

    Args:
        window: window side ``l`` (>= 2).
        pixel: the reference pixel ``j = a * l + b`` in ``0 .. l*l - 1`` (row ``a``,
            column ``b``), or ``"max"`` for the window's maximum.
        scale: factor applied to the difference. Published NPR detectors feed
            ``2/3 * (x - ref(x))``; the default 1.0 keeps the plain difference.
        crop: when H or W is not a multiple of ``l``, drop the last ``H mod l``
            rows and ``W mod l`` columns (the output is then smaller than the
            input); with ``crop=False`` such input is a :class:`DfcompressError`.

    >>> import torch
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> NPR()(x)[0, 0]
    tensor([[0., 1., 0., 1.],
            [4., 5., 4., 5.],
            [0., 1., 0., 1.],
            [4., 5., 4., 5.]])
    >>> NPR(pixel="max")(x)[0, 0, :2, :2]
    tensor([[-5., -4.],
            [-1.,  0.]])
    """

    def __init__(
        self,
        window: int = 2,
        pixel: int | Literal["max"] = 0,
        scale: float = 1.0,
        crop: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise DfcompressError(f"window={window!r} is invalid: use an int >= 2")
        if pixel == "max":
            use_max, index = True, 0
        elif isinstance(pixel, int) and not isinstance(pixel, bool) and 0 <= pixel < window**2:
            use_max, index = False, pixel
        else:
            raise DfcompressError(
                f"pixel={pixel!r} is invalid for window={window}: use an int in "
                f"0..{window**2 - 1} (j = row * {window} + column) or 'max'"
            )
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise DfcompressError(f"scale={scale!r} is invalid: use a finite number, e.g. 2/3")
        self.window = window
        self.use_max = use_max
        self.row = index // window
        self.col = index % window
        self.scale = float(scale)
        self.crop = bool(crop)

    def output_channels(self, in_channels: int) -> int:
        """Channels produced for ``in_channels`` input channels (the same number)."""
        return in_channels

    def forward(self, x: Tensor) -> Tensor:
        """``scale * (x - ref(x))`` for an ``(N, C, H, W)`` batch."""
        check_image(x, "NPR", self.window)
        h, w = x.shape[2], x.shape[3]
        size = self.window
        if h % size != 0 or w % size != 0:
            if not self.crop:
                raise DfcompressError(
                    f"NPR(window={size}, crop=False) needs H and W divisible by {size}, "
                    f"got input of shape {list(x.shape)}"
                )
            h, w = h - h % size, w - w % size
            x = x[:, :, :h, :w]
        # 4-D ops only (a strided slice or a max pool, then a nearest up-sampling):
        # exported to ONNX they stay cheap Slice/MaxPool/Resize nodes.
        pick = x[:, :, self.row :: size, self.col :: size]
        small = F.max_pool2d(x, size) if self.use_max else pick
        ref = F.interpolate(small, scale_factor=float(size), mode="nearest")
        return (x - ref) * self.scale

    def extra_repr(self) -> str:
        pixel = "'max'" if self.use_max else str(self.row * self.window + self.col)
        return f"window={self.window}, pixel={pixel}, scale={self.scale}, crop={self.crop}"
