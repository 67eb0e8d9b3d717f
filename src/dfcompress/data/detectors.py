"""Reference detectors for the proxy task, rebuildable by :func:`dfcompress.load`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import require
from dfcompress.features import NPR
from dfcompress.io._registry import register_factory
from dfcompress.models import Variant, bnext
from dfcompress.models.efficientnet import EfficientNetVariant, efficientnet
from dfcompress.models.resnet import WIDTHS, se_resnet

__all__ = ["npr_bnext", "npr_efficientnet", "npr_resnet", "npr_timm"]


@register_factory
def npr_bnext(variant: Variant = "tiny", num_classes: int = 1) -> nn.Sequential:
    """A BNext fed with neighbouring-pixel relationships: ``Sequential(NPR, BNext)``.

    The NPR front end (2x2 window, top-left reference pixel, scale 2/3, as in
    the published NPR detector) exposes up-sampling traces; the BNext backbone
    classifies them. The model records its constructor for
    :func:`dfcompress.save` / :func:`dfcompress.load`.

    Args:
        variant: BNext size, ``"tiny"`` .. ``"large"``.
        num_classes: 1 (a fake-vs-real logit) or 2 (real, fake logits).

    >>> import torch
    >>> net = npr_bnext("tiny")
    >>> net.eval()(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """
    model = nn.Sequential(NPR(scale=2 / 3), bnext(variant, num_classes=num_classes))
    set_constructor(
        model, "dfcompress.data.detectors:npr_bnext", variant=variant, num_classes=num_classes
    )
    return model


@register_factory
def npr_resnet(widths: Sequence[int] = WIDTHS, num_classes: int = 1) -> nn.Sequential:
    """A float SE-ResNet fed with neighbouring-pixel relationships: ``Sequential(NPR, net)``.

    The same NPR front end as :func:`npr_bnext`, in front of
    :func:`dfcompress.models.resnet.se_resnet` (dense 3x3/1x1 convs, BatchNorm,
    ReLU: every layer has an int8 kernel on CPU). With the default widths it
    has 1.24M parameters; it is the demo's detector. The model records its
    constructor for :func:`dfcompress.save` / :func:`dfcompress.load`.

    Args:
        widths: Stage widths of the SE-ResNet.
        num_classes: 1 (a fake-vs-real logit) or 2 (real, fake logits).

    >>> import torch
    >>> npr_resnet((8, 16)).eval()(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """
    ws = [int(w) for w in widths]
    model = nn.Sequential(NPR(scale=2 / 3), se_resnet(ws, num_classes=num_classes))
    set_constructor(
        model, "dfcompress.data.detectors:npr_resnet", widths=ws, num_classes=num_classes
    )
    return model


@register_factory
def npr_efficientnet(variant: EfficientNetVariant = "b0", num_classes: int = 1) -> nn.Sequential:
    """An EfficientNet fed with neighbouring-pixel relationships: ``Sequential(NPR, net)``.

    The same NPR front end as :func:`npr_bnext`, in front of
    :func:`dfcompress.models.efficientnet.efficientnet` (depthwise convolutions,
    squeeze-and-excitation, SiLU). Its parameter names are those of
    ``npr_timm("efficientnet_b0")``, so either checkpoint loads into the other;
    this one needs no extra. The model records its constructor for
    :func:`dfcompress.save` / :func:`dfcompress.load`.

    Args:
        variant: EfficientNet size, ``"b0"`` .. ``"b7"``.
        num_classes: 1 (a fake-vs-real logit) or 2 (real, fake logits).

    >>> import torch
    >>> npr_efficientnet("b0").eval()(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """
    model = nn.Sequential(NPR(scale=2 / 3), efficientnet(variant, num_classes=num_classes))
    set_constructor(
        model,
        "dfcompress.data.detectors:npr_efficientnet",
        variant=variant,
        num_classes=num_classes,
    )
    return model


@register_factory
def npr_timm(model_name: str = "efficientnet_b0", num_classes: int = 1) -> nn.Sequential:
    """A timm backbone (``pretrained=False``) fed with NPR features: ``Sequential(NPR, net)``.

    The same NPR front end as :func:`npr_bnext`, in front of any timm
    architecture; needs the ``zoo`` extra. The model records its constructor,
    so :func:`dfcompress.load` rebuilds it without needing ``allow=["timm"]``
    (it is a registered factory).

    Args:
        model_name: a timm architecture name, e.g. ``"efficientnet_b0"``.
        num_classes: 1 (a fake-vs-real logit) or 2 (real, fake logits).
    """
    timm: Any = require("timm", "zoo")
    net = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    model = nn.Sequential(NPR(scale=2 / 3), net)
    set_constructor(
        model, "dfcompress.data.detectors:npr_timm", model_name=model_name, num_classes=num_classes
    )
    return model
