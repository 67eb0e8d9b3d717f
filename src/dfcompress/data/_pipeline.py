"""The generator-like up-sampling pipeline and the augmentations shared by both classes."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# The "generator" weights are fixed for the whole library (not per data seed):
# a fake must look like the output of one trained network, not of a new one per sample.
_GENERATOR_SEED = 7


@functools.lru_cache(maxsize=8)
def _transposed_kernel(factor: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_GENERATOR_SEED * 31 + factor)
    k = 2 * factor
    w = torch.rand(3, 1, k, k, generator=g) + 0.5
    # normalise each polyphase component so a flat input stays flat (same mean colour)
    for i in range(factor):
        for j in range(factor):
            phase = w[:, :, i::factor, j::factor]
            w[:, :, i::factor, j::factor] = phase / phase.sum(dim=(2, 3), keepdim=True)
    return w


@functools.lru_cache(maxsize=8)
def _shuffle_kernel(factor: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_GENERATOR_SEED * 37 + factor)
    n = factor * factor
    w = torch.rand(3 * n, 1, 3, 3, generator=g) ** 2
    w[:, :, 1, 1] += 1.5  # mostly the pixel itself, some of its neighbours
    return w / w.sum(dim=(2, 3), keepdim=True)


def upsample(low: torch.Tensor, factor: int, method: str) -> torch.Tensor:
    """Up-sample ``[N, 3, h, w]`` by ``factor`` the way a generator's decoder might."""
    if method == "nearest":
        return F.interpolate(low, scale_factor=factor, mode="nearest")
    if method == "bilinear":
        return F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False)
    if method == "transposed":
        w = _transposed_kernel(factor)
        pad = F.pad(low, (1, 1, 1, 1), mode="replicate")
        out = F.conv_transpose2d(pad, w, stride=factor, padding=factor // 2, groups=3)
        h, ww = low.shape[2] * factor, low.shape[3] * factor
        top = (out.shape[2] - h) // 2
        left = (out.shape[3] - ww) // 2
        return out[:, :, top : top + h, left : left + ww]
    if method == "pixelshuffle":
        w = _shuffle_kernel(factor)
        pad = F.pad(low, (1, 1, 1, 1), mode="replicate")
        # channel c of the input feeds output channels c*n .. c*n+n-1 (groups=3)
        feats = F.conv2d(pad, w, groups=3)
        return F.pixel_shuffle(feats, factor)
    raise ValueError(method)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur of ``[N, 3, H, W]`` with one sigma per image (0 = untouched)."""
    d = torch.tensor([-1.0, 0.0, 1.0])
    s = sigma.clamp_min(1e-6)[:, None]
    k1 = torch.exp(-(d[None, :] ** 2) / (2 * s**2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]  # [N, 3, 3]
    n, c, h, w = x.shape
    weight = k2.repeat_interleave(c, dim=0)[:, None]  # [N*C, 1, 3, 3]
    pad = F.pad(x.reshape(1, n * c, h, w), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(pad, weight, groups=n * c).reshape(n, c, h, w)
    return torch.where((sigma > 0)[:, None, None, None], out, x)
