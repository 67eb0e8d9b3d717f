"""ImageNet-style inputs cut from the photographs bundled with scikit-image.

For checking a pretrained ImageNet classifier, and what compression does to it,
without downloading a data set: :func:`photo` is one whole photograph through
the usual evaluation transform (shorter side to 256/224 of the crop size,
centre crop); :func:`crops` draws deterministic random square crops of random
size and position from all the photographs (:data:`dfcompress.data._photos.PHOTOS`),
resized to the crop size. Both are normalised with ImageNet's channel mean and
standard deviation (:func:`normalize`). Crops drawn with different seeds
coincide only by chance, so one seed can calibrate and another evaluate.

Needs scikit-image (``pip install 'dfcompress[demo]'``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dfcompress.data._photos import PHOTOS, _raw_photos
from dfcompress.errors import DfcompressError

__all__ = ["MEAN", "STD", "crops", "normalize", "photo"]

#: ImageNet's per-channel mean and standard deviation of RGB values in [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - MEAN) / STD`` per channel, for images in [0, 1] shaped ``(..., 3, H, W)``.

    >>> normalize(torch.full((3, 1, 1), 0.5)).flatten()
    tensor([0.0655, 0.1964, 0.4178])
    """
    if x.dim() < 3 or x.shape[-3] != 3:
        raise DfcompressError(f"normalize expects (..., 3, H, W) images, got {list(x.shape)}")
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
    return (x - mean) / std


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        raise DfcompressError(f"size={size!r} is out of range: use an integer in 8..1024")


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    out = F.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True)[0]
    return out.clamp(0.0, 1.0)


def photo(name: str, size: int = 224) -> torch.Tensor:
    """One photograph as a normalised ``(3, size, size)`` ImageNet evaluation input.

    The shorter side is resized to ``round(size * 256 / 224)``, then the centre
    ``size x size`` square is cut.

    Args:
        name: One of :data:`dfcompress.data._photos.PHOTOS` (``"chelsea"``, ``"coffee"``, ...).
        size: Side of the square input.
    """
    _check_size(size)
    if name not in PHOTOS:
        raise DfcompressError(f"photo name={name!r} is unknown: use one of {', '.join(PHOTOS)}")
    img = _raw_photos()[name]
    h, w = img.shape[1:]
    short = round(size * 256 / 224)
    scale = short / min(h, w)
    img = _resize(img, max(short, round(h * scale)), max(short, round(w * scale)))
    top, left = (img.shape[1] - size) // 2, (img.shape[2] - size) // 2
    return normalize(img[:, top : top + size, left : left + size].contiguous())


def crops(n: int, size: int = 224, seed: int = 0, min_scale: float = 0.25) -> torch.Tensor:
    """``n`` normalised square crops of the photographs, shaped ``(n, 3, size, size)``.

    Crop ``i`` takes a photograph, a side between ``min_scale`` and 1 times the
    photograph's shorter side, and a position, all drawn from a generator
    seeded with ``seed``; the square is resized to ``size``. The same arguments
    give the same crops on every machine.

    Args:
        n: Number of crops.
        size: Side of each crop in pixels.
        seed: Seed of the draw (use different seeds for calibration and evaluation).
        min_scale: Smallest crop side as a fraction of the shorter side, in (0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DfcompressError(f"n={n!r} must be a positive integer")
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DfcompressError(f"seed={seed!r} must be a non-negative integer")
    if not isinstance(min_scale, (int, float)) or not 0.0 < min_scale <= 1.0:
        raise DfcompressError(f"min_scale={min_scale!r} is out of range: use a number in (0, 1]")
    raw = _raw_photos()
    rng = np.random.default_rng(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = raw[PHOTOS[int(rng.integers(len(PHOTOS)))]]
        h, w = img.shape[1:]
        side = max(1, round(min(h, w) * float(rng.uniform(min_scale, 1.0))))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        out[i] = _resize(img[:, top : top + side, left : left + side], size, size)
    return normalize(out)
