"""Input checks shared by the feature modules (scriptable: called from ``forward``).

No ``from __future__ import annotations`` here: TorchScript must see the real
annotation of :func:`onnx_exporting`, which it does not compile.
"""

import torch
from torch import Tensor

from dfcompress.errors import DfcompressError


def check_image(x: Tensor, what: str, min_size: int) -> None:
    """Require an ``(N, C, H, W)`` batch with ``H, W >= min_size``."""
    if x.dim() != 4:
        raise DfcompressError(
            f"{what} expects an (N, C, H, W) batch, got a {x.dim()}-d tensor of shape "
            f"{list(x.shape)}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise DfcompressError(
            f"{what} needs H and W >= {min_size}, got input of shape {list(x.shape)}"
        )


@torch.jit.unused
def onnx_exporting() -> bool:
    """Whether an ONNX export is tracing the caller (guard with ``torch.jit.is_scripting()``)."""
    return bool(torch.onnx.is_in_onnx_export())
