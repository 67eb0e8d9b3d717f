"""The built-in proxy real-vs-generated task and a small training loop for detectors."""

from __future__ import annotations

from dfcompress.data.proxy import UPSAMPLERS as UPSAMPLERS
from dfcompress.data.proxy import ProxyConfig as ProxyConfig
from dfcompress.data.proxy import ProxyDeepfakeDataset as ProxyDeepfakeDataset
from dfcompress.data.proxy import loader as loader
from dfcompress.data.proxy import make_proxy as make_proxy
from dfcompress.data.train import Predictions as Predictions
from dfcompress.data.train import predict as predict
from dfcompress.data.train import train_detector as train_detector

__all__ = [
    "UPSAMPLERS",
    "Predictions",
    "ProxyConfig",
    "ProxyDeepfakeDataset",
    "loader",
    "make_proxy",
    "predict",
    "train_detector",
]
