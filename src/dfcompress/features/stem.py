"""Feed extra input channels to a detector: stack features, widen the first conv.

:class:`FeatureStack` concatenates the RGB image with feature maps computed from
it (NPR, phase, magnitude); :func:`widen_stem` gives a trained detector's first
convolution the extra input channels, keeping its RGB behaviour exactly::

    stack = FeatureStack([PhaseSpectrum(), MagnitudeSpectrum()])     # 3 + 1 + 1 channels
    detector = widen_stem(detector, stack.out_channels - 3)
    logits = detector(stack(images))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from dfcompress._rebuild import get_constructor
from dfcompress.errors import DfcompressError
from dfcompress.features._validate import check_image
from dfcompress.select import select

__all__ = ["FeatureStack", "widen_stem"]


def _channels_of(feature: nn.Module, in_channels: int) -> int:
    method = getattr(feature, "output_channels", None)
    if callable(method):
        return int(method(in_channels))
    fixed = getattr(feature, "out_channels", None)
    if isinstance(fixed, int):
        return fixed
    raise DfcompressError(
        f"cannot tell how many channels {type(feature).__name__} produces: give it an "
        "output_channels(in_channels) method or an int out_channels attribute"
    )


class FeatureStack(nn.Module):
    """Concatenate the input image (optional) and feature maps along the channels.

    Every part is cropped to the smallest height and width among them (top-left
    corner kept), so features that crop, such as :class:`~dfcompress.features.NPR`
    on odd sizes, still stack.

    Args:
        features: feature modules applied to the input; each declares its output
            channels through ``output_channels(in_channels)`` or ``out_channels``.
        include_rgb: put the input itself first.
        in_channels: channels of the input image (3 for RGB).

    Attributes:
        out_channels: channels of the stacked output.

    >>> from dfcompress.features import NPR, PhaseSpectrum
    >>> stack = FeatureStack([NPR(), PhaseSpectrum()])
    >>> stack.out_channels
    7
    >>> stack(torch.rand(2, 3, 16, 16)).shape
    torch.Size([2, 7, 16, 16])
    """

    def __init__(
        self, features: Sequence[nn.Module], include_rgb: bool = True, in_channels: int = 3
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise DfcompressError(f"in_channels={in_channels!r} is invalid: use an int >= 1")
        feats = list(features)
        for f in feats:
            if not isinstance(f, nn.Module):
                raise DfcompressError(f"FeatureStack expects nn.Module features, got {f!r}")
        if not feats and not include_rgb:
            raise DfcompressError("FeatureStack([], include_rgb=False) would produce nothing")
        self.features = nn.ModuleList(feats)
        self.include_rgb = bool(include_rgb)
        self.in_channels = in_channels
        self.out_channels = (in_channels if include_rgb else 0) + sum(
            _channels_of(f, in_channels) for f in feats
        )

    def output_channels(self, in_channels: int) -> int:
        """Channels of the stacked output (for nesting stacks)."""
        return self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``cat([x, f1(x), f2(x), ...], dim=1)``, cropped to a common size."""
        check_image(x, "FeatureStack", 1)
        if x.shape[1] != self.in_channels:
            raise DfcompressError(
                f"FeatureStack expects {self.in_channels} input channels, got input of "
                f"shape {list(x.shape)}"
            )
        parts: list[Tensor] = [x] if self.include_rgb else []
        for feature in self.features:
            parts.append(feature(x))
        h, w = parts[0].shape[2], parts[0].shape[3]
        for p in parts:
            h, w = min(h, p.shape[2]), min(w, p.shape[3])
        return torch.cat([p[:, :, :h, :w] for p in parts], dim=1)


def widen_stem(
    model: nn.Module,
    extra_channels: int,
    init: Literal["mean", "zeros"] = "mean",
    *,
    inplace: bool = False,
) -> nn.Module:
    """Give the model's first conv (the ``"stem"`` selector) ``extra_channels`` more inputs.

    The original input channels keep their kernels, so with the extra channels
    all zero the widened model computes exactly what the original did. The new
    kernels are

    - ``init="mean"``: the mean of the original input kernels, rescaled by
      ``C / (C + extra_channels)`` (``C`` = original input channels). All new
      channels together then weigh ``extra * C / (C + extra)`` original-kernel
      means, less than the ``C`` of the original channels however many are
      added, so a wide feature stack does not swamp the RGB response.
    - ``init="zeros"``: zero, so the extra inputs are ignored until trained.

    A constructor recorded by :func:`dfcompress._rebuild.set_constructor` with an
    ``in_chans`` argument (e.g. :func:`dfcompress.models.bnext`) is updated, so
    the widened model saves and loads.

    Args:
        model: the detector; its first conv/linear layer must be a ``groups=1``
            :class:`~torch.nn.Conv2d`.
        extra_channels: number of input channels to add (>= 1).
        init: how to initialise the new kernels, see above.
        inplace: modify ``model`` itself instead of a copy.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> wide = widen_stem(net, 2)
    >>> wide[0].in_channels
    5
    >>> x = torch.rand(1, 3, 8, 8)
    >>> torch.equal(wide(torch.cat([x, torch.zeros(1, 2, 8, 8)], 1)), net(x))
    True
    """
    if isinstance(extra_channels, bool) or not isinstance(extra_channels, int):
        raise DfcompressError(f"extra_channels={extra_channels!r} is invalid: use an int >= 1")
    if extra_channels < 1:
        raise DfcompressError(f"extra_channels={extra_channels!r} is invalid: use an int >= 1")
    if init not in ("mean", "zeros"):
        raise DfcompressError(f"init={init!r} is invalid: use 'mean' or 'zeros'")
    ((name, stem),) = select(model, "stem", required=True).items()
    if type(stem) is not nn.Conv2d or stem.groups != 1:
        raise DfcompressError(
            f"widen_stem needs the first layer to be a groups=1 nn.Conv2d, but {name!r} is {stem!r}"
        )
    out = model if inplace else copy.deepcopy(model)
    old = out.get_submodule(name)
    if not isinstance(old, nn.Conv2d):  # pragma: no cover - the copy mirrors the model
        raise DfcompressError(f"{name!r} changed type while copying the model")
    channels = old.in_channels
    new = nn.Conv2d(
        channels + extra_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.train(old.training)
    with torch.no_grad():
        new.weight[:, :channels] = old.weight
        if init == "mean":
            fill = old.weight.mean(dim=1, keepdim=True) * (channels / (channels + extra_channels))
            new.weight[:, channels:] = fill.expand(-1, extra_channels, -1, -1)
        else:
            new.weight[:, channels:] = 0
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    parent_name, _, leaf = name.rpartition(".")
    setattr(out.get_submodule(parent_name), leaf, new)
    ctor = get_constructor(out)
    if ctor is not None and isinstance(ctor.get("kwargs", {}).get("in_chans"), int):
        kwargs = dict(ctor["kwargs"])
        kwargs["in_chans"] = channels + extra_channels
        out.dfc_constructor = {"factory": ctor["factory"], "kwargs": kwargs}  # type: ignore[assignment]
    return out
