"""MobileNetV2 (Sandler et al., 2018) with torchvision's parameter names.

The module tree is written here from the paper's table, without torchvision,
and names its parameters as torchvision's ImageNet checkpoints do, so such a
state dict loads with ``strict=True`` (see
:func:`dfcompress.models.pretrained_mobilenet_v2`):

- ``features.0``: 3x3 stem convolution (stride 2), BatchNorm, ReLU6, as
  children ``0``, ``1``, ``2``;
- ``features.1`` .. ``features.17``: inverted residual blocks, each a
  ``conv`` sequence of an expanding 1x1 conv/BN/ReLU6 (absent when the
  expansion is 1), a depthwise 3x3 conv/BN/ReLU6 and a projecting 1x1 conv
  and BatchNorm (linear: no activation); a block that keeps its size adds its
  input to its output;
- ``features.18``: 1x1 conv/BN/ReLU6 to 1280 channels;
- global average pooling, then ``classifier``: dropout (``classifier.0``) and
  a linear layer (``classifier.1``).

>>> net = mobilenet_v2(num_classes=2)
>>> net(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 2])
>>> sum(p.numel() for p in mobilenet_v2().parameters())  # the published 3.5M
3504872
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import DfcompressError
from dfcompress.io._registry import register_factory

__all__ = ["BLOCKS", "ConvBNReLU6", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

#: The paper's table: (expansion t, output channels c, repeats n, first stride s).
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class ConvBNReLU6(nn.Sequential):
    """Convolution without bias, BatchNorm, ReLU6 (children ``0``, ``1``, ``2``).

    >>> ConvBNReLU6(3, 8, stride=2)(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter each channel (depthwise 3x3), project (1x1, linear).

    The input is added to the output when stride is 1 and the channels match.

    >>> block = InvertedResidual(16, 16, stride=1, expansion=6)
    >>> block.use_residual, block(torch.randn(1, 16, 8, 8)).shape
    (True, torch.Size([1, 16, 8, 8]))
    """

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise DfcompressError(f"stride={stride!r} is not supported: use 1 or 2")
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """The block's output (plus ``x`` when the block keeps its size)."""
        y: Tensor = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 1.0; build it with :func:`mobilenet_v2`.

    Args:
        num_classes: Outputs of the classifier.
        dropout: Dropout probability before the classifier (training only).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise DfcompressError(f"num_classes={num_classes!r} must be an integer >= 1")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise DfcompressError(f"dropout={dropout!r} is out of range: use a number in [0, 1)")
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, stride=2)]
        cin = STEM_CHANNELS
        for t, c, n, s in BLOCKS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, LAST_CHANNELS, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(LAST_CHANNELS, num_classes))
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (1280 channels), e.g. for Grad-CAM."""
        # No input check: it would stop torch.fx tracing (BatchNorm folding, selectors).
        out: Tensor = self.features(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)``."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
        logits: Tensor = self.classifier(pooled)
        return logits


@register_factory
def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV2:
    """Build a MobileNetV2 (width 1.0), randomly initialised.

    Its parameter names are torchvision's, so an ImageNet state dict of
    torchvision's layout loads with ``load_state_dict(..., strict=True)``; the
    model records its constructor for :func:`dfcompress.save` /
    :func:`dfcompress.load`.

    Args:
        num_classes: Outputs of the classifier (1000 for ImageNet weights).
        dropout: Dropout probability before the classifier.

    >>> net = mobilenet_v2(num_classes=1)
    >>> net.classifier[1].out_features, len(net.features)
    (1, 19)
    """
    model = MobileNetV2(num_classes=num_classes, dropout=dropout)
    set_constructor(
        model,
        "dfcompress.models.mobilenet_v2:mobilenet_v2",
        num_classes=num_classes,
        dropout=float(dropout),
    )
    return model
