"""Frequency-domain features: the phase-only image (SPSL) and the log-magnitude spectrum.

Both work on the gray image (mean of the RGB channels) and transform each image
over (H, W) only; samples of a batch never mix.

- Phase-only image: ``F = FFT2(gray)``, ``x_phase = real(IFFT2(exp(i * angle(F))))``.
  Its raw scale is tiny (RMS ``1 / sqrt(H W)``), so by default each image is
  standardized to zero mean and unit variance.
- Magnitude spectrum: ``log(1 + |fftshift(FFT2(gray))|)`` (DC in the centre),
  standardized per image.

Frequencies whose magnitude is below ``eps`` times the image's largest magnitude
count as exactly zero (phase 0): in float32 their phase is round-off noise, and
without this a constant image would give a different phase image every run.

Eager and TorchScript use :mod:`torch.fft`. During ONNX export (which has no
complex tensors) the same transforms are written as real DFT matrix products,
so the exported graph is plain MatMul; the two agree to float32 round-off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dfcompress.errors import DfcompressError
from dfcompress.features._validate import check_image, onnx_exporting

__all__ = ["MagnitudeSpectrum", "PhaseSpectrum"]


def _gray(x: Tensor, what: str) -> Tensor:
    check_image(x, what, 2)
    if x.shape[1] == 3:
        return x.mean(dim=1, keepdim=True)
    if x.shape[1] == 1:
        return x
    raise DfcompressError(
        f"{what} expects 3 (RGB) or 1 (gray) channels, got input of shape {list(x.shape)}"
    )


def _standardize(x: Tensor) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
    return (x - mean) / (std + 1e-12)


def _dft(n: int, like: Tensor, shift: bool) -> tuple[Tensor, Tensor]:
    """cos and sin DFT matrices ``[k, m]`` (rows by frequency, fftshifted if asked)."""
    m = torch.arange(n, device=like.device, dtype=torch.int64)
    k = (m - n // 2) % n if shift else m
    # (k * m) mod n keeps the angle small and exact before the float conversion.
    angle = ((k.unsqueeze(1) * m.unsqueeze(0)) % n).to(like.dtype)
    angle = angle * (2 * math.pi / n)
    return torch.cos(angle), torch.sin(angle)


def _spectrum_matmul(gray: Tensor, shift: bool) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of FFT2 over (H, W) as real matrix products."""
    ch, sh = _dft(gray.shape[-2], gray, shift)
    cw, sw = _dft(gray.shape[-1], gray, shift)
    real = ch @ gray @ cw.T - sh @ gray @ sw.T
    imag = -(sh @ gray @ cw.T + ch @ gray @ sw.T)
    return real, imag


def _phase_matmul(gray: Tensor, eps: float) -> Tensor:
    real, imag = _spectrum_matmul(gray, shift=False)
    mag = torch.sqrt(real.square() + imag.square())
    keep = mag > eps * mag.amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(keep, mag, torch.ones_like(mag))
    unit_re = torch.where(keep, real / safe, torch.ones_like(mag))
    unit_im = torch.where(keep, imag / safe, torch.zeros_like(mag))
    ch, sh = _dft(gray.shape[-2], gray, False)
    cw, sw = _dft(gray.shape[-1], gray, False)
    p_re = ch @ unit_re - sh @ unit_im
    p_im = ch @ unit_im + sh @ unit_re
    return (p_re @ cw - p_im @ sw) / (gray.shape[-2] * gray.shape[-1])


def _phase_fft(gray: Tensor, eps: float) -> Tensor:
    spec = torch.fft.fft2(gray, dim=(-2, -1))
    mag = spec.abs()
    keep = mag > eps * mag.amax(dim=(-2, -1), keepdim=True)
    angle = torch.where(keep, torch.angle(spec), torch.zeros_like(mag))
    unit = torch.polar(torch.ones_like(angle), angle)
    phase: Tensor = torch.fft.ifft2(unit, dim=(-2, -1)).real
    return phase


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise DfcompressError(f"eps={eps!r} is invalid: use a float in [0, 1), e.g. 1e-5")
    return float(eps)


class PhaseSpectrum(nn.Module):
    """Phase-only image of the gray input (SPSL): ``(N, 3 or 1, H, W) -> (N, 1, H, W)``.

    Args:
        standardize: standardize each image to zero mean, unit variance (the raw
            image has RMS ``1 / sqrt(H W)``).
        eps: relative magnitude below which a frequency counts as zero (see the
            module docstring).

    >>> import torch
    >>> x = torch.rand(2, 3, 8, 8)
    >>> phase = PhaseSpectrum()
    >>> phase(x).shape
    torch.Size([2, 1, 8, 8])
    >>> torch.allclose(phase(5 * x), phase(x), atol=1e-4)  # phase ignores contrast
    True
    """

    def __init__(self, standardize: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.standardize = bool(standardize)
        self.eps = _check_eps(eps)

    def output_channels(self, in_channels: int) -> int:
        """One channel, whatever the input."""
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """The (standardized) phase-only image of each sample."""
        gray = _gray(x, "PhaseSpectrum")
        if not torch.jit.is_scripting() and onnx_exporting():  # type: ignore[attr-defined]
            out = _phase_matmul(gray, self.eps)
        else:
            out = _phase_fft(gray, self.eps)
        return _standardize(out) if self.standardize else out


class MagnitudeSpectrum(nn.Module):
    """Centred log-magnitude spectrum ``log1p|fftshift(FFT2(gray))|``, standardized per image.

    ``(N, 3 or 1, H, W) -> (N, 1, H, W)``.

    >>> import torch
    >>> mag = MagnitudeSpectrum()(torch.rand(2, 3, 8, 8))
    >>> mag.shape
    torch.Size([2, 1, 8, 8])
    >>> abs(round(mag[0].mean().item(), 4)), round(mag[0].std(unbiased=False).item(), 4)
    (0.0, 1.0)
    """

    def output_channels(self, in_channels: int) -> int:
        """One channel, whatever the input."""
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """The standardized log-magnitude spectrum of each sample."""
        gray = _gray(x, "MagnitudeSpectrum")
        if not torch.jit.is_scripting() and onnx_exporting():  # type: ignore[attr-defined]
            real, imag = _spectrum_matmul(gray, shift=True)
            mag = torch.sqrt(real.square() + imag.square())
        else:
            spec = torch.fft.fft2(gray, dim=(-2, -1))
            mag = torch.fft.fftshift(spec, dim=(-2, -1)).abs()
        return _standardize(torch.log1p(mag))
