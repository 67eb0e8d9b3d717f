"""A deterministic real-vs-generated proxy task built from scikit-image's photographs.

No deepfake data set can be bundled, so demos, tests and benchmarks use this
stand-in with the property that matters for a detector: fakes carry the traces
of a generator's up-sampling decoder.

- **real**: a random square crop (side between ``size`` and ``2 * size``) of a
  photo, shrunk to ``size`` with anti-aliasing.
- **fake**: the same kind of crop rendered at ``size / factor`` and brought
  back to ``size`` by one of the up-samplers: ``"nearest"``, ``"bilinear"``,
  ``"transposed"`` (a transposed convolution with a fixed random kernel) or
  ``"pixelshuffle"`` (a fixed random 3x3 convolution then pixel shuffle), plus
  mild Gaussian noise (``fake_noise``).
- **both classes** then get the same augmentations: horizontal flip,
  brightness and contrast jitter, a Gaussian blur with probability ``blur_p``,
  sensor noise (``noise``), and 8-bit quantization.

Each photo is cut into tiles of ``2 * size`` pixels and a fixed permutation
gives each tile to one split (60 % train, 20 % val, 20 % test), so splits never
share a pixel, whatever the seed. The same arguments always give the same
samples. Generated data is cached in memory (as uint8) for the session.

>>> ds = make_proxy("val", size=32, n=8, seed=0)
>>> image, label, name = ds[0]
>>> image.shape, image.dtype, label in (0, 1), name.endswith(".png")
(torch.Size([3, 32, 32]), torch.float32, True, True)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dfcompress.data._photos import SPLITS, photos, tiles
from dfcompress.data._pipeline import blur, upsample
from dfcompress.errors import DfcompressError

__all__ = [
    "UPSAMPLERS",
    "ProxyConfig",
    "ProxyDeepfakeDataset",
    "Split",
    "Upsampler",
    "loader",
    "make_proxy",
]

Split: TypeAlias = Literal["train", "val", "test"]
Upsampler: TypeAlias = Literal["nearest", "bilinear", "transposed", "pixelshuffle"]
UPSAMPLERS: tuple[Upsampler, ...] = ("nearest", "bilinear", "transposed", "pixelshuffle")
_DEFAULT_N = {"train": 2000, "val": 500, "test": 1000}


def _check_unit(name: str, value: float, hi: float = 1.0) -> None:
    if not 0.0 <= value <= hi:
        raise DfcompressError(f"{name}={value} is out of range: use 0..{hi}")


@dataclass(frozen=True)
class ProxyConfig:
    """Difficulty knobs of the proxy task (defaults: a small CNN reaches AUC ~0.9-0.99).

    Attributes:
        upsamplers: Up-samplers the fakes are drawn from, uniformly.
        factors: Up-sampling factors drawn uniformly per fake (powers of two).
        fake_noise: Std of the Gaussian noise added to fakes only (on [0, 1] pixels).
        noise: Max std of the sensor noise added to both classes (drawn per image).
        blur_p: Probability that an image (of either class) is blurred.
        blur_sigma: Max sigma of that 3x3 Gaussian blur.
        brightness: Max absolute brightness shift (both classes).
        contrast: Max relative contrast change (both classes).
        mix: Fakes are ``mix * generated + (1 - mix) * original`` with ``mix``
            drawn in ``[mix, 1]``; lower values hide the up-sampling traces.
    """

    upsamplers: tuple[Upsampler, ...] = UPSAMPLERS
    factors: tuple[int, ...] = (2,)
    fake_noise: float = 0.01
    noise: float = 0.02
    blur_p: float = 0.3
    blur_sigma: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.2
    mix: float = 1.0

    def __post_init__(self) -> None:
        if not self.upsamplers:
            raise DfcompressError(
                f"upsamplers={self.upsamplers} is empty: use some of {UPSAMPLERS}"
            )
        for u in self.upsamplers:
            if u not in UPSAMPLERS:
                raise DfcompressError(f"upsampler {u!r} is unknown: use one of {UPSAMPLERS}")
        if not self.factors:
            raise DfcompressError("factors=() is empty: use e.g. (2,) or (2, 4)")
        for f in self.factors:
            if f not in (2, 4, 8):
                raise DfcompressError(f"factor {f} is not supported: use 2, 4 or 8")
        _check_unit("fake_noise", self.fake_noise, 0.5)
        _check_unit("noise", self.noise, 0.5)
        _check_unit("blur_p", self.blur_p)
        _check_unit("blur_sigma", self.blur_sigma, 5.0)
        _check_unit("brightness", self.brightness, 0.5)
        _check_unit("contrast", self.contrast, 0.9)
        _check_unit("mix", self.mix)


def _crops(
    rng: np.random.Generator, owned: tuple[tuple[str, int, int], ...], size: int, count: int
) -> tuple[torch.Tensor, list[str], list[int]]:
    """``count`` random crops (side size..2*size, inside one tile) shrunk to ``size``."""
    imgs = photos(6 * size)
    tile = 2 * size
    out = torch.empty(count, 3, size, size)
    names: list[str] = []
    sides: list[int] = []
    for i in range(count):
        photo, top, left = owned[int(rng.integers(len(owned)))]
        side = int(rng.integers(size, tile + 1))
        dy = int(rng.integers(0, tile - side + 1))
        dx = int(rng.integers(0, tile - side + 1))
        crop = imgs[photo][:, top + dy : top + dy + side, left + dx : left + dx + side]
        if side != size:
            crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True)[0]
        out[i] = crop
        names.append(photo)
        sides.append(side)
    return out, names, sides


def _fakes(
    rng: np.random.Generator, crops: torch.Tensor, cfg: ProxyConfig
) -> tuple[torch.Tensor, list[str]]:
    n, _, size, _ = crops.shape
    methods: list[str] = [cfg.upsamplers[int(k)] for k in rng.integers(len(cfg.upsamplers), size=n)]
    factors = [cfg.factors[int(k)] for k in rng.integers(len(cfg.factors), size=n)]
    out = crops.clone()
    for method in dict.fromkeys(methods):
        for factor in dict.fromkeys(factors):
            idx = [i for i in range(n) if methods[i] == method and factors[i] == factor]
            if not idx:
                continue
            if size % factor:
                raise DfcompressError(f"size={size} is not divisible by the factor {factor}")
            low = F.interpolate(
                crops[idx], size=(size // factor,) * 2, mode="bilinear", antialias=True
            )
            out[idx] = upsample(low, factor, method)
    mix = torch.from_numpy(rng.uniform(cfg.mix, 1.0, size=n)).float()[:, None, None, None]
    out = mix * out + (1 - mix) * crops
    noise = torch.from_numpy(rng.standard_normal(out.shape)).float()
    return out + cfg.fake_noise * noise, methods


def _augment(rng: np.random.Generator, x: torch.Tensor, cfg: ProxyConfig) -> torch.Tensor:
    n = x.shape[0]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    sigma = rng.uniform(0.3, max(cfg.blur_sigma, 0.3), size=n) * (rng.random(n) < cfg.blur_p)
    x = blur(x, torch.from_numpy(sigma).float())
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = torch.from_numpy(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, n)).float()
    b = torch.from_numpy(rng.uniform(-cfg.brightness, cfg.brightness, n)).float()
    x = (x - mean) * c[:, None, None, None] + mean + b[:, None, None, None]
    std = torch.from_numpy(rng.uniform(0.0, cfg.noise, n)).float()[:, None, None, None]
    x = x + std * torch.from_numpy(rng.standard_normal(x.shape)).float()
    return x


@functools.lru_cache(maxsize=8)
def _generate(
    split: str, size: int, n: int, seed: int, cfg: ProxyConfig
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    owned = tiles(split, 2 * size, 6 * size)
    if not owned:
        raise DfcompressError(f"size={size} is too large for the bundled photos: use at most 96")
    rng = np.random.default_rng([seed, SPLITS.index(split), size, n])
    n_real = n // 2
    real, real_src, _ = _crops(rng, owned, size, n_real)
    base, fake_src, _ = _crops(rng, owned, size, n - n_real)
    fake, methods = _fakes(rng, base, cfg)
    images = _augment(rng, torch.cat([real, fake]), cfg)
    images = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    labels = torch.cat(
        [torch.zeros(n_real, dtype=torch.long), torch.ones(n - n_real, dtype=torch.long)]
    )
    names = [f"real/{src}_{i:05d}.png" for i, src in enumerate(real_src)]
    names += [
        f"fake/{m}/{src}_{n_real + i:05d}.png"
        for i, (m, src) in enumerate(zip(methods, fake_src, strict=True))
    ]
    order = torch.from_numpy(rng.permutation(n))
    return images[order], labels[order], tuple(names[int(i)] for i in order)


class ProxyDeepfakeDataset(Dataset[tuple[torch.Tensor, int, str]]):
    """The proxy task as a torch Dataset of ``(image, label, name)``.

    ``image`` is float32 ``[3, size, size]`` in [0, 1]; ``label`` is 1 for fake,
    0 for real (half of each, fakes get the extra one for odd ``n``); ``name``
    looks like ``"real/astronaut_00012.png"`` or ``"fake/bilinear/coffee_00513.png"``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint source regions).
        size: Image side in pixels, a multiple of every factor, 16..96.
        n: Number of samples; default 2000 / 500 / 1000 for train / val / test.
        seed: Sampling seed (crops, up-samplers, augmentations).
        config: Difficulty knobs, see :class:`ProxyConfig`.

    >>> ds = ProxyDeepfakeDataset("test", size=32, n=10)
    >>> len(ds), int(ds.labels.sum())
    (10, 5)
    """

    def __init__(
        self,
        split: Split = "train",
        *,
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        config: ProxyConfig | None = None,
    ) -> None:
        if split not in SPLITS:
            raise DfcompressError(f"split={split!r} is unknown: use one of {SPLITS}")
        if not 16 <= size <= 96:
            raise DfcompressError(f"size={size} is out of range: use 16..96")
        n = _DEFAULT_N[split] if n is None else n
        if n < 1:
            raise DfcompressError(f"n={n} must be at least 1")
        self.split = split
        self.size = size
        self.seed = seed
        self.config = config or ProxyConfig()
        images, labels, names = _generate(split, size, n, seed, self.config)
        self.images_uint8 = images
        self.labels = labels
        self.names: list[str] = list(names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image = self.images_uint8[index].to(torch.float32) / 255.0
        return image, int(self.labels[index]), self.names[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one float tensor ``[n, 3, size, size]`` and the labels ``[n]``."""
        return self.images_uint8.to(torch.float32) / 255.0, self.labels.clone()


def make_proxy(
    split: Split = "train",
    *,
    size: int = 64,
    n: int | None = None,
    seed: int = 0,
    config: ProxyConfig | None = None,
) -> ProxyDeepfakeDataset:
    """Build (or fetch from the in-memory cache) one split of the proxy task.

    Same arguments as :class:`ProxyDeepfakeDataset`.

    >>> a, b = make_proxy("val", size=32, n=6, seed=1), make_proxy("val", size=32, n=6, seed=1)
    >>> bool(torch.equal(a.tensors()[0], b.tensors()[0])), a.names == b.names
    (True, True)
    """
    return ProxyDeepfakeDataset(split, size=size, n=n, seed=seed, config=config)


def loader(
    split: Split = "train",
    *,
    batch_size: int = 64,
    shuffle: bool | None = None,
    size: int = 64,
    n: int | None = None,
    seed: int = 0,
    config: ProxyConfig | None = None,
    **kwargs: Any,
) -> DataLoader[tuple[torch.Tensor, int, str]]:
    """A DataLoader over :func:`make_proxy` yielding ``(images, labels, names)`` batches.

    ``shuffle`` defaults to True for train only; the shuffling order is seeded by
    ``seed``. Extra keyword arguments go to :class:`~torch.utils.data.DataLoader`.

    >>> images, labels, names = next(iter(loader("val", size=32, n=4, batch_size=4)))
    >>> images.shape, labels.dtype, len(names)
    (torch.Size([4, 3, 32, 32]), torch.int64, 4)
    """
    ds = make_proxy(split, size=size, n=n, seed=seed, config=config)
    if shuffle is None:
        shuffle = split == "train"
    if shuffle and "generator" not in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, **kwargs)
