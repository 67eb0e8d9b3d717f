"""Model families for deepfake detection, built for compression."""

from __future__ import annotations

from dfcompress.models._binary import BinaryActivation as BinaryActivation
from dfcompress.models._binary import BinaryConv2d as BinaryConv2d
from dfcompress.models._binary import binary_sign as binary_sign
from dfcompress.models.bnext import STAGE_CHANNELS as STAGE_CHANNELS
from dfcompress.models.bnext import BinaryProcessor as BinaryProcessor
from dfcompress.models.bnext import BNext as BNext
from dfcompress.models.bnext import BNextSE as BNextSE
from dfcompress.models.bnext import Variant as Variant
from dfcompress.models.bnext import bnext as bnext
from dfcompress.models.bnext import bnext_large as bnext_large
from dfcompress.models.bnext import bnext_middle as bnext_middle
from dfcompress.models.bnext import bnext_small as bnext_small
from dfcompress.models.bnext import bnext_tiny as bnext_tiny
from dfcompress.models.bnext import deployed_size_bytes as deployed_size_bytes
from dfcompress.models.bnext import pack_binary as pack_binary

__all__ = [
    "STAGE_CHANNELS",
    "BNext",
    "BNextSE",
    "BinaryActivation",
    "BinaryConv2d",
    "BinaryProcessor",
    "Variant",
    "binary_sign",
    "bnext",
    "bnext_large",
    "bnext_middle",
    "bnext_small",
    "bnext_tiny",
    "deployed_size_bytes",
    "pack_binary",
]
