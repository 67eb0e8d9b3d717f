"""EfficientNet B0-B7 (Tan and Le, 2019) with timm's parameter names.

The module tree is written here from the paper's B0 table and its compound
scaling, without timm, and names its parameters as timm's ``efficientnet_b*``
models do (``conv_stem``, ``bn1``, ``blocks.<stage>.<block>...``,
``conv_head``, ``bn2``, ``classifier``), so a state dict of timm's layout loads
with ``strict=True`` and a detector trained on timm's EfficientNet runs, is
compressed and deploys where timm (and torchvision, which it needs) is not
installed:

- ``conv_stem``/``bn1``/``act1``: 3x3 convolution (stride 2), BatchNorm, SiLU;
- ``blocks.0``: depthwise-separable blocks (depthwise conv, BatchNorm, SiLU,
  squeeze-and-excitation, pointwise conv, BatchNorm);
- ``blocks.1`` .. ``blocks.6``: inverted residual blocks (expanding 1x1 conv,
  depthwise 3x3 or 5x5 conv, squeeze-and-excitation, projecting 1x1 conv; a
  block that keeps its size adds its input);
- ``conv_head``/``bn2``/``act2``: 1x1 convolution to 1280 channels (scaled),
  then global average pooling, dropout and the linear ``classifier``.

BatchNorm and its activation are separate modules here (timm fuses them in
one ``BatchNormAct2d`` whose activation has no parameters), which keeps every
BatchNorm foldable into the convolution before it.

>>> net = efficientnet("b0", num_classes=2)
>>> net(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 2])
>>> sum(p.numel() for p in efficientnet("b0").parameters())  # the published 5.3M
5288548
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from dfcompress._rebuild import set_constructor
from dfcompress._se import register_se
from dfcompress._validate import check_int, check_number
from dfcompress.errors import DfcompressError
from dfcompress.io._registry import register_factory

__all__ = [
    "STAGES",
    "VARIANTS",
    "DepthwiseSeparable",
    "EfficientNet",
    "EfficientNetSE",
    "EfficientNetVariant",
    "MBConv",
    "efficientnet",
    "efficientnet_b0",
]

#: B0's stages: (repeats, kernel, first stride, expansion, output channels);
#: the first stage's blocks are depthwise-separable (expansion 1), the others
#: inverted residuals. Every block has squeeze-and-excitation (a quarter of
#: the block's input channels).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25

EfficientNetVariant = Literal["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]

#: Compound scaling: variant -> (width multiplier, depth multiplier, resolution, dropout).
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def round_channels(channels: float, divisor: int = 8) -> int:
    """``channels`` to the nearest multiple of ``divisor``, never 10 % below it.

    >>> round_channels(32 * 1.1), round_channels(1280 * 1.4), round_channels(4)
    (32, 1792, 8)
    """
    out = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * channels else out


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)


@register_se
class EfficientNetSE(nn.Module):
    """Squeeze-and-excitation: average pool, 1x1 conv down, SiLU, 1x1 conv up, sigmoid.

    Args:
        channels: Channels in and out.
        hidden: Channels between the two 1x1 convolutions.

    >>> EfficientNetSE(16, 4)(torch.randn(2, 16, 5, 5)).shape
    torch.Size([2, 16, 5, 5])
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, hidden, 1)
        self.act1 = nn.SiLU()
        self.conv_expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` scaled per channel by its gate."""
        out: Tensor = x * self.gate(self.conv_expand(self.act1(self.conv_reduce(self.pool(x)))))
        return out


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, BatchNorm, SiLU, SE, pointwise conv, BatchNorm (no activation).

    The input is added to the output when stride is 1 and the channels match.

    >>> block = DepthwiseSeparable(32, 16, kernel=3, stride=1)
    >>> block.has_skip, block(torch.randn(1, 32, 8, 8)).shape
    (False, torch.Size([1, 16, 8, 8]))
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.SiLU()
        self.se = EfficientNetSE(cin, round(cin * SE_RATIO))
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """The block's output (plus ``x`` when the block keeps its size)."""
        y: Tensor = self.bn2(self.conv_pw(self.se(self.act1(self.bn1(self.conv_dw(x))))))
        return x + y if self.has_skip else y


class MBConv(nn.Module):
    """Inverted residual: expand (1x1), depthwise, SE, project (1x1, linear).

    Each convolution but the last is followed by BatchNorm and SiLU; the
    input is added to the output when stride is 1 and the channels match.

    >>> block = MBConv(24, 24, kernel=5, stride=1, expansion=6)
    >>> block.has_skip, block.conv_dw.groups, block.se.conv_reduce.out_channels
    (True, 144, 6)
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = round_channels(cin * expansion)
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.SiLU()
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = nn.SiLU()
        self.se = EfficientNetSE(mid, round(cin * SE_RATIO))
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """The block's output (plus ``x`` when the block keeps its size)."""
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.se(self.act2(self.bn2(self.conv_dw(y))))
        out: Tensor = self.bn3(self.conv_pwl(y))
        return x + out if self.has_skip else out


class EfficientNet(nn.Module):
    """An EfficientNet; build it with :func:`efficientnet`.

    Args:
        width: Channel multiplier (B0: 1.0).
        depth: Block-repeat multiplier (B0: 1.0); repeats round up.
        num_classes: Outputs of the classifier.
        dropout: Dropout probability before the classifier (training only).
        in_channels: Input channels.
    """

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(in_channels, "in_channels", low=1)
        check_number(width, "width", positive=True)
        check_number(depth, "depth", positive=True)
        if check_number(dropout, "dropout", low=0.0) >= 1.0:
            raise DfcompressError(f"dropout={dropout!r} is out of range: use a number in [0, 1)")
        cin = round_channels(STEM_CHANNELS * width)
        self.conv_stem = _conv(in_channels, cin, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.SiLU()
        stages: list[nn.Module] = []
        for repeats, kernel, stride, expansion, channels in STAGES:
            cout = round_channels(channels * width)
            blocks: list[nn.Module] = []
            for i in range(math.ceil(repeats * depth)):
                s = stride if i == 0 else 1
                if expansion == 1:
                    blocks.append(DepthwiseSeparable(cin, cout, kernel, s))
                else:
                    blocks.append(MBConv(cin, cout, kernel, s, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = round_channels(HEAD_CHANNELS * width)
        self.conv_head = _conv(cin, self.num_features, 1)
        self.bn2 = nn.BatchNorm2d(self.num_features)
        self.act2 = nn.SiLU()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (``num_features`` channels), e.g. for Grad-CAM."""
        # No input check: it would stop torch.fx tracing (BatchNorm folding, selectors).
        x = self.act1(self.bn1(self.conv_stem(x)))
        out: Tensor = self.act2(self.bn2(self.conv_head(self.blocks(x))))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)``."""
        pooled = torch.flatten(self.global_pool(self.forward_features(x)), 1)
        logits: Tensor = self.classifier(self.dropout(pooled))
        return logits


@register_factory
def efficientnet(
    variant: EfficientNetVariant = "b0", num_classes: int = 1000, in_channels: int = 3
) -> EfficientNet:
    """Build an EfficientNet ``variant`` (``"b0"`` .. ``"b7"``), randomly initialised.

    Its parameter names are timm's (``timm.create_model("efficientnet_b0")``
    and the other ``efficientnet_b*``), so a state dict of timm's layout loads
    with ``load_state_dict(..., strict=True)`` and computes the same outputs;
    the model records its constructor for :func:`dfcompress.save` /
    :func:`dfcompress.load`. :data:`VARIANTS` lists the width and depth
    multipliers, the paper's resolution and the classifier's dropout.

    Args:
        variant: ``"b0"`` (5.3M parameters at 1000 classes) to ``"b7"``.
        num_classes: Outputs of the classifier (1 for a fake-vs-real logit).
        in_channels: Input channels.

    >>> net = efficientnet("b1", num_classes=1)
    >>> [len(stage) for stage in net.blocks], net.classifier.in_features
    ([2, 3, 3, 4, 4, 5, 2], 1280)
    """
    if variant not in VARIANTS:
        raise DfcompressError(
            f"variant={variant!r} is not an EfficientNet: use one of {sorted(VARIANTS)}"
        )
    width, depth, _, dropout = VARIANTS[variant]
    model = EfficientNet(width, depth, num_classes, dropout, in_channels)
    set_constructor(
        model,
        "dfcompress.models.efficientnet:efficientnet",
        variant=variant,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    return model


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3) -> EfficientNet:
    """:func:`efficientnet` ``("b0", ...)``: the network timm calls ``efficientnet_b0``.

    >>> efficientnet_b0(num_classes=1).dfc_constructor["kwargs"]["variant"]
    'b0'
    """
    return efficientnet("b0", num_classes, in_channels)
