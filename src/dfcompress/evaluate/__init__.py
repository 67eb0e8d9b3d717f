"""Evaluation: detection metrics, cost measurement and Grad-CAM.

This package knows nothing of quantization or pruning: it evaluates any model.
"""

from __future__ import annotations

from dfcompress.evaluate.measure import Measurement as Measurement
from dfcompress.evaluate.measure import count_macs as count_macs
from dfcompress.evaluate.measure import measure as measure

__all__ = ["Measurement", "count_macs", "measure"]
