"""``dfcompress demo``: a BNext NPR detector on the proxy task, compressed and compared.

The demo detector is a small BNext (binary 3x3 and 1x1 processors, float stem,
SE branches and head) reading NPR features: ``x - up(down(x))`` over 2x2
windows, the traces an up-sampling generator leaves, scaled by 2/3 as in the
published NPR detector. A checkpoint trained on the built-in proxy task by
``scripts/train_demo_detector.py`` ships with the package, its binary weights
packed at 1 bit; :func:`load_demo_detector` unpacks them so that the float
layers can be quantized and pruned.

:func:`run_demo` builds the variants of :data:`DEMO_RECIPES`, packs every
variant's binary convolutions (their deployed form, which gives identical
outputs) and writes the comparison report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import DfcompressError
from dfcompress.models import BNext, BinaryConv2d, pack_binary

if TYPE_CHECKING:
    from dfcompress.report import Report

__all__ = [
    "DEMO_CHANNELS",
    "DEMO_RECIPES",
    "DEMO_SIZE",
    "NprDetector",
    "checkpoint_path",
    "demo_detector",
    "load_demo_detector",
    "run_demo",
    "train_demo_detector",
    "unpack_binary",
]

DEMO_CHANNELS: tuple[int, ...] = (16, 32, 64, 64, 128)
"""Stem width, then the output channels of each BNext block of the demo detector."""

DEMO_SIZE = 32
"""Image side (pixels) the demo detector is trained and evaluated at."""

DEMO_RECIPES: tuple[str, ...] = (
    "q16",
    "q8",
    "q4",
    "p50",
    "s50",
    "q16-p50",
    "q8-p50",
    "ise8-4-8",
)
"""The variants :func:`run_demo` compares with the baseline."""

_CHECKPOINT = "demo_detector.safetensors"


def npr(x: torch.Tensor) -> torch.Tensor:
    """NPR over 2x2 windows, scaled by 2/3: ``(x - nearest_up(x[..., ::2, ::2])) * 2/3``.

    >>> npr(torch.ones(1, 3, 4, 4)).abs().max().item()
    0.0
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    ref = F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
    return (x - ref) * (2.0 / 3.0)


class NprDetector(nn.Module):
    """A detector that feeds :func:`npr` features of its RGB input to a BNext.

    Args:
        channels: BNext stem width then block widths (each equal to or double the last).
        num_classes: 1 (one fake-vs-real logit) or 2.

    >>> NprDetector((8, 16), 1)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """

    def __init__(self, channels: Sequence[int] = DEMO_CHANNELS, num_classes: int = 1) -> None:
        super().__init__()
        self.net = BNext(tuple(int(c) for c in channels), num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of an ``[N, 3, H, W]`` batch in [0, 1]."""
        out: torch.Tensor = self.net(npr(x))
        return out


def demo_detector(channels: Sequence[int] = DEMO_CHANNELS, num_classes: int = 1) -> NprDetector:
    """A randomly initialised :class:`NprDetector` that :func:`dfcompress.load` can rebuild.

    >>> demo_detector().dfc_constructor["factory"]
    'dfcompress.demo:demo_detector'
    """
    model = NprDetector(channels, num_classes)
    set_constructor(
        model,
        "dfcompress.demo:demo_detector",
        channels=[int(c) for c in channels],
        num_classes=num_classes,
    )
    return model


def unpack_binary(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn packed :class:`~dfcompress.models.BinaryConv2d` layers back into trainable ones.

    The latent float weight becomes ``alpha * sign``, which binarizes to the
    same ``alpha`` and signs, so the outputs are unchanged.

    >>> from dfcompress.models import pack_binary
    >>> net = demo_detector((8, 16)).eval()
    >>> x = torch.rand(1, 3, 32, 32)
    >>> torch.equal(unpack_binary(pack_binary(net))(x), net(x))
    True
    """
    import copy

    out = model if inplace else copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, BinaryConv2d) and m.weight is None:
            w = m.binary_weight().detach().clone()
            m.weight_bits = None
            m.weight_scale = None
            m.weight = nn.Parameter(w)
            m.packed = False
    return out


def checkpoint_path() -> Path:
    """Where the shipped demo checkpoint lives inside the installed package."""
    return Path(str(resources.files("dfcompress") / "_assets" / _CHECKPOINT))


def load_demo_detector(path: str | Path | None = None, *, unpack: bool = True) -> nn.Module:
    """Load the demo detector (the shipped checkpoint by default), unpacked unless asked.

    Raises:
        DfcompressError: the file is missing.
    """
    from dfcompress.io import load

    p = Path(path) if path is not None else checkpoint_path()
    if not p.is_file():
        raise DfcompressError(
            f"no demo checkpoint at {p}: run scripts/train_demo_detector.py, "
            "or `dfcompress demo --train`"
        )
    model = load(p)
    return unpack_binary(model, inplace=True) if unpack else model


def train_demo_detector(
    *,
    size: int = DEMO_SIZE,
    n_train: int = 2000,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-3,
    channels: Sequence[int] = DEMO_CHANNELS,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train the demo detector on the proxy task's train split (deterministic for a seed).

    Returns the unpacked model in eval mode.
    """
    from dfcompress.data import loader, train_detector

    torch.manual_seed(seed)
    model = demo_detector(channels)
    data = loader("train", size=size, n=n_train, batch_size=batch_size, seed=seed)
    trained = train_detector(
        model, data, epochs=epochs, lr=lr, progress=progress, inplace=True, seed=seed
    )
    return trained.eval()
