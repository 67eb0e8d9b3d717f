"""A small float ResNet with squeeze-and-excitation, built for int8 CPU runtimes.

Every layer is one an int8 CPU runtime (XNNPACK, oneDNN) runs as a quantized
kernel: dense 3x3 and 1x1 convolutions, BatchNorm (folded into the conv before
quantizing), ReLU, additions and a global average pool. The layout follows
ResNet-18's basic block (He et al., 2016), one block per stage:

- ``stem``: 3x3 conv (stride 2), BatchNorm, ReLU;
- ``stages.K``: a :class:`BasicBlock` per width, stride 1 for the first and 2
  for the others; each ends in a :class:`SqueezeExcite` gate before the
  residual addition (SE-ResNet, Hu et al., 2018);
- global average pooling, then ``fc``.

>>> net = se_resnet((8, 16), num_classes=1)
>>> net(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 1])
>>> sum(p.numel() for p in se_resnet().parameters())  # the demo detector's size
1238177
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dfcompress._rebuild import set_constructor
from dfcompress._se import register_se
from dfcompress.errors import DfcompressError
from dfcompress.io._registry import register_factory

__all__ = ["WIDTHS", "BasicBlock", "SEResNet", "SqueezeExcite", "se_resnet"]

WIDTHS: tuple[int, ...] = (32, 64, 128, 256)
"""Default stage widths (the stem has the first width)."""


@register_se
class SqueezeExcite(nn.Module):
    """Channel gate: average pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid, multiply.

    Args:
        channels: Channels in and out.
        reduction: ``channels // reduction`` (at least 4) hidden channels.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` scaled per channel by its gate."""
        out: Tensor = x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return out


class BasicBlock(nn.Module):
    """Two 3x3 conv/BatchNorm layers, an SE gate and a shortcut, then ReLU.

    The shortcut is a strided 1x1 conv and BatchNorm when the block changes
    the width or the resolution, else the identity.

    Args:
        cin: Input channels.
        cout: Output channels.
        stride: Stride of the first conv (1 or 2).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """The block's output, ``[N, cout, H / stride, W / stride]``."""
        y = self.se(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        out: Tensor = self.relu2(y + self.shortcut(x))
        return out


class SEResNet(nn.Module):
    """The network of this module's docstring.

    Args:
        widths: Stage widths, one :class:`BasicBlock` each; the stem has ``widths[0]``.
        num_classes: Outputs of ``fc`` (1: a fake-vs-real logit).
        in_channels: Input channels.
    """

    def __init__(
        self, widths: Sequence[int] = WIDTHS, num_classes: int = 1, in_channels: int = 3
    ) -> None:
        super().__init__()
        ws = [int(w) for w in widths]
        if not ws or min(ws) < 1:
            raise DfcompressError(
                f"widths={list(widths)!r} is invalid: use positive channel counts"
            )
        if num_classes < 1:
            raise DfcompressError(f"num_classes={num_classes} is invalid: use 1 or more")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, ws[0], 3, 2, 1, bias=False), nn.BatchNorm2d(ws[0]), nn.ReLU()
        )
        blocks = [BasicBlock(ws[0], ws[0], 1)]
        blocks += [BasicBlock(a, b, 2) for a, b in itertools.pairwise(ws)]
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ws[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` of an ``[N, in_channels, H, W]`` batch."""
        out: Tensor = self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))
        return out


@register_factory
def se_resnet(widths: Sequence[int] = WIDTHS, num_classes: int = 1) -> SEResNet:
    """A randomly initialised :class:`SEResNet` that :func:`dfcompress.load` can rebuild.

    >>> se_resnet((8,)).dfc_constructor["factory"]
    'dfcompress.models.resnet:se_resnet'
    """
    model = SEResNet(widths, num_classes)
    set_constructor(
        model,
        "dfcompress.models.resnet:se_resnet",
        widths=[int(w) for w in widths],
        num_classes=num_classes,
    )
    return model
