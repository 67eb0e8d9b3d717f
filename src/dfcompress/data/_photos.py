"""The photographs bundled with scikit-image, split into disjoint tiles per data split."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dfcompress.errors import require

# Natural photographs that ship inside the scikit-image wheel (no download):
# name -> loader name in skimage.data. Grey photos are repeated over RGB.
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "coins",
    "clock",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
# Fixed: the tile-to-split assignment must not depend on the data seed, or two
# seeds could put the same pixels in train and test.
_SPLIT_SEED = 20240917


@functools.lru_cache(maxsize=1)
def _raw_photos() -> dict[str, torch.Tensor]:
    data: Any = require("skimage.data", "demo")
    out: dict[str, torch.Tensor] = {}
    for name in PHOTOS:
        arr = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(arr[:, :, :3])).permute(2, 0, 1)
        out[name] = t.to(torch.float32) / 255.0
    return out


@functools.lru_cache(maxsize=4)
def photos(max_short_side: int) -> dict[str, torch.Tensor]:
    """Photos as float [3, H, W] in [0, 1], shrunk (never enlarged) to a short side cap."""
    out: dict[str, torch.Tensor] = {}
    for name, img in _raw_photos().items():
        h, w = img.shape[1:]
        scale = min(1.0, max_short_side / min(h, w))
        if scale < 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0]
        out[name] = img.clamp(0.0, 1.0)
    return out


@functools.lru_cache(maxsize=16)
def tiles(split: str, tile: int, max_short_side: int) -> tuple[tuple[str, int, int], ...]:
    """Tiles ``(photo, top, left)`` of side ``tile`` owned by ``split``.

    Every photo is cut into a grid of non-overlapping tiles; a fixed permutation
    gives 60 % of each photo's tiles to train, 20 % to val and 20 % to test,
    so no pixel appears in two splits.
    """
    rng = np.random.default_rng(_SPLIT_SEED)
    index = SPLITS.index(split)
    owned: list[tuple[str, int, int]] = []
    for name, img in photos(max_short_side).items():
        rows, cols = img.shape[1] // tile, img.shape[2] // tile
        cells = [(r * tile, c * tile) for r in range(rows) for c in range(cols)]
        order = rng.permutation(len(cells))
        if len(cells) < len(SPLITS):
            continue
        n_val = max(1, round(_SPLIT_FRACTIONS[1] * len(cells)))
        n_test = max(1, round(_SPLIT_FRACTIONS[2] * len(cells)))
        n_train = len(cells) - n_val - n_test
        bounds = (0, n_train, n_train + n_val, len(cells))
        for k in order[bounds[index] : bounds[index + 1]]:
            owned.append((name, *cells[int(k)]))
    return tuple(owned)
