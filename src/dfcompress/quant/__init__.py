"""Quantization: fake-quant ops, observers, configs, wrappers, the Quantizer and ``quantize``.

>>> import torch
>>> from torch import nn
>>> q = quantize(nn.Sequential(nn.Linear(8, 4)), "int4", progress=False)
>>> type(q[0]).__name__, q[0].bits
('QuantLinear', 4)
"""

from __future__ import annotations

from dfcompress.quant._bnfold import FoldedBatchNorm as FoldedBatchNorm
from dfcompress.quant.api import quantize as quantize
from dfcompress.quant.cast import CastConv1d as CastConv1d
from dfcompress.quant.cast import CastConv2d as CastConv2d
from dfcompress.quant.cast import CastConv3d as CastConv3d
from dfcompress.quant.cast import CastLayer as CastLayer
from dfcompress.quant.cast import CastLinear as CastLinear
from dfcompress.quant.config import BF16 as BF16
from dfcompress.quant.config import FP16 as FP16
from dfcompress.quant.config import UINT8_OUTPUTS as UINT8_OUTPUTS
from dfcompress.quant.config import Float as Float
from dfcompress.quant.config import IntQuant as IntQuant
from dfcompress.quant.config import Mixed as Mixed
from dfcompress.quant.config import PerChannel as PerChannel
from dfcompress.quant.config import PerGroup as PerGroup
from dfcompress.quant.config import PerTensor as PerTensor
from dfcompress.quant.config import resolve_config as resolve_config
from dfcompress.quant.fake_quantizer import FakeQuantizer as FakeQuantizer
from dfcompress.quant.modules import QuantConv1d as QuantConv1d
from dfcompress.quant.modules import QuantConv2d as QuantConv2d
from dfcompress.quant.modules import QuantConv3d as QuantConv3d
from dfcompress.quant.modules import QuantLayer as QuantLayer
from dfcompress.quant.modules import QuantLinear as QuantLinear
from dfcompress.quant.quantizer import Quantizer as Quantizer
from dfcompress.quant.quantizer import Rule as Rule

__all__ = [
    "BF16",
    "FP16",
    "UINT8_OUTPUTS",
    "CastConv1d",
    "CastConv2d",
    "CastConv3d",
    "CastLayer",
    "CastLinear",
    "FakeQuantizer",
    "Float",
    "FoldedBatchNorm",
    "IntQuant",
    "Mixed",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLayer",
    "QuantLinear",
    "Quantizer",
    "Rule",
    "quantize",
    "resolve_config",
]
