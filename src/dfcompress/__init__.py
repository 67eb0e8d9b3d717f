"""dfcompress: compression primitives for image and video deepfake detectors."""

from __future__ import annotations

from dfcompress._version import __version__ as __version__
from dfcompress.errors import DfcompressError as DfcompressError

__all__ = ["DfcompressError", "__version__"]
