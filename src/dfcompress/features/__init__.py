"""Input features for deepfake detectors: NPR, phase and magnitude spectra, wider stems.

>>> import torch
>>> from dfcompress.features import NPR, FeatureStack, MagnitudeSpectrum, PhaseSpectrum
>>> stack = FeatureStack([NPR(scale=2 / 3), PhaseSpectrum(), MagnitudeSpectrum()])
>>> stack(torch.rand(1, 3, 32, 32)).shape
torch.Size([1, 8, 32, 32])
"""

from __future__ import annotations

from dfcompress.features.npr import NPR as NPR
from dfcompress.features.spectrum import MagnitudeSpectrum as MagnitudeSpectrum
from dfcompress.features.spectrum import PhaseSpectrum as PhaseSpectrum
from dfcompress.features.stem import FeatureStack as FeatureStack
from dfcompress.features.stem import widen_stem as widen_stem

__all__ = ["NPR", "FeatureStack", "MagnitudeSpectrum", "PhaseSpectrum", "widen_stem"]
