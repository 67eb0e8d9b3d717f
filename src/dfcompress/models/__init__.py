"""Model families for deepfake detection, built for compression."""

from __future__ import annotations

from dfcompress.models._binary import BinaryActivation as BinaryActivation
from dfcompress.models._binary import BinaryConv2d as BinaryConv2d
from dfcompress.models._binary import Int8BinaryConv2d as Int8BinaryConv2d
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
from dfcompress.models.efficientnet import EfficientNet as EfficientNet
from dfcompress.models.efficientnet import efficientnet as efficientnet
from dfcompress.models.mobilenet_v2 import InvertedResidual as InvertedResidual
from dfcompress.models.mobilenet_v2 import MobileNetV2 as MobileNetV2
from dfcompress.models.mobilenet_v2 import mobilenet_v2 as mobilenet_v2
from dfcompress.models.pretrained import find_weights as find_weights
from dfcompress.models.pretrained import load_weights as load_weights
from dfcompress.models.pretrained import pretrained_mobilenet_v2 as pretrained_mobilenet_v2
from dfcompress.models.resnet import SEResNet as SEResNet
from dfcompress.models.resnet import se_resnet as se_resnet

__all__ = [
    "STAGE_CHANNELS",
    "BNext",
    "BNextSE",
    "BinaryActivation",
    "BinaryConv2d",
    "BinaryProcessor",
    "EfficientNet",
    "Int8BinaryConv2d",
    "InvertedResidual",
    "MobileNetV2",
    "SEResNet",
    "Variant",
    "binary_sign",
    "bnext",
    "bnext_large",
    "bnext_middle",
    "bnext_small",
    "bnext_tiny",
    "deployed_size_bytes",
    "efficientnet",
    "find_weights",
    "load_weights",
    "mobilenet_v2",
    "pack_binary",
    "pretrained_mobilenet_v2",
    "se_resnet",
]
