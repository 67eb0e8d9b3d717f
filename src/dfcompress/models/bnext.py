"""BNext: a binary network on a MobileNet-like backbone (tiny, small, middle, large).

The structure follows the published BNext family (Guo et al., "Join the High
Accuracy Club on ImageNet with A Binary Neural Network Ticket", 2022): a float
stem, a stack of blocks made of binary *processors*, and a float head.

- Stem: 3x3 conv (stride 2) + BatchNorm.
- Block ``C_in -> C_out``: a 3x3 processor ``C_in -> C_in`` (stride 2 where the
  channels grow, except for the first block), then a 1x1 processor
  ``C_in -> C_in``; when ``C_out = 2 C_in`` two parallel 1x1 processors are
  concatenated. The 3x3 processor of every even-numbered block also multiplies
  its binary branch by the PReLU'd shortcut (BNext's element-wise attention).
- Processor: learnable-bias sign activation, :class:`BinaryConv2d`, BatchNorm,
  PReLU, a learnable per-channel mix ``m = s * pool(x) + (1 - s) * y`` with
  ``s`` clipped to [0, 1], an SE gate ``y = SE(m) * y``, BatchNorm, and a
  shortcut (2x2 average pool where the stride is 2, identity otherwise).
- Head: PReLU, global average pool, Linear.

The SE branches are :class:`BNextSE` blocks (registered for the ``"se"``
selector), the stem conv is the model's first :class:`~torch.nn.Conv2d`
(``"stem"``) and ``fc`` its last :class:`~torch.nn.Linear` (``"head"``), so the
I-SE-O mixed-precision rules of the BNext study address them directly, while
the binary convolutions are left to 1-bit storage (:func:`pack_binary`).
"""

from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import DfcompressError
from dfcompress.io._registry import register_factory
from dfcompress.models._binary import BinaryActivation, BinaryConv2d
from dfcompress.select import register_se

__all__ = [
    "STAGE_CHANNELS",
    "BNext",
    "BNextSE",
    "BinaryProcessor",
    "Variant",
    "bnext",
    "bnext_large",
    "bnext_middle",
    "bnext_small",
    "bnext_tiny",
    "deployed_size_bytes",
    "pack_binary",
]

Variant = Literal["tiny", "small", "middle", "large"]

#: Output channels of the stem, then of every block, per variant.
STAGE_CHANNELS: dict[str, tuple[int, ...]] = {
    "tiny": (32, 64, *[128] * 2, *[256] * 2, *[512] * 6, *[1024] * 2),
    "small": (48, 96, *[192] * 2, *[384] * 2, *[768] * 6, *[1536] * 2),
    "middle": (48, 96, *[192] * 4, *[384] * 4, *[768] * 8, *[1536] * 4),
    "large": (64, 128, *[256] * 4, *[512] * 4, *[1024] * 16, *[2048] * 4),
}


@register_se
class BNextSE(nn.Module):
    """Squeeze-and-excitation gate: pool, 1x1 conv C->C/r, ReLU, 1x1 conv C/r->C, sigmoid.

    Returns the ``(N, C, 1, 1)`` gate, which the processor multiplies into its
    binary branch. ``reduce`` and ``expand`` are plain float convolutions.

    Args:
        channels: input and output channels.
        reduction: channel reduction ratio ``r`` (8 in BNext).

    >>> BNextSE(16)(torch.randn(2, 16, 5, 5)).shape
    torch.Size([2, 16, 1, 1])
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """The per-channel gate in (0, 1) computed from ``x``."""
        gate: Tensor = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return gate


class BinaryProcessor(nn.Module):
    """One BNext processor (``channels -> channels``), see the module docstring.

    Args:
        channels: input and output channels.
        kernel_size: 3 or 1.
        stride: 1, or 2 to halve the resolution (the shortcut is 2x2 average pooled).
        elm_attention: also multiply the binary branch by the PReLU'd shortcut.

    >>> BinaryProcessor(8, 3, stride=2)(torch.randn(2, 8, 6, 6)).shape
    torch.Size([2, 8, 3, 3])
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int = 1, elm_attention: bool = False
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise DfcompressError(f"stride={stride!r} is not supported: use 1 or 2")
        self.elm_attention = elm_attention
        self.activation = BinaryActivation(channels)
        self.conv = BinaryConv2d(channels, channels, kernel_size, stride)
        self.norm1 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)
        self.mix = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.se = BNextSE(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        # ceil_mode keeps the shortcut the same size as the padded strided conv on odd inputs.
        self.pool: nn.Module = (
            nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
            if stride == 2
            else nn.Identity()
        )
        self.shortcut_act: nn.Module = nn.PReLU(channels) if elm_attention else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Binary branch gated by SE, normalised, plus the shortcut."""
        shortcut = self.pool(x)
        residual = self.pool(self.shortcut_act(x)) if self.elm_attention else shortcut
        y = self.prelu(self.norm1(self.conv(self.activation(x))))
        s = self.mix.clamp(0.0, 1.0)
        y = self.se(s * shortcut + (1.0 - s) * y) * y
        if self.elm_attention:
            y = y * residual
        out: Tensor = self.norm2(y) + residual
        return out


class BNextBlock(nn.Module):
    """A 3x3 processor then one 1x1 processor, or two concatenated when channels double.

    >>> BNextBlock(8, 16, stride=2)(torch.randn(1, 8, 8, 8)).shape
    torch.Size([1, 16, 4, 4])
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, elm_attention: bool = False
    ) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise DfcompressError(
                f"a BNext block maps C to C or 2C channels, got {in_channels} -> {out_channels}"
            )
        self.spatial = BinaryProcessor(in_channels, 3, stride, elm_attention)
        branches = out_channels // in_channels
        self.pointwise = nn.ModuleList(BinaryProcessor(in_channels, 1) for _ in range(branches))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the 3x3 processor, then the 1x1 processor(s) (concatenated)."""
        x = self.spatial(x)
        outs: list[Tensor] = []
        for branch in self.pointwise:
            outs.append(branch(x))
        return torch.cat(outs, dim=1)


class BNext(nn.Module):
    """The BNext binary network; build it with :func:`bnext`.

    Attributes:
        stem_conv: the float 3x3 stem convolution (the ``"stem"`` selector's target).
        fc: the float classifier (the ``"head"`` selector's target).

    >>> net = BNext((8, 16, 32), num_classes=2)
    >>> net(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 2])
    """

    def __init__(self, channels: tuple[int, ...], num_classes: int = 1, in_chans: int = 3) -> None:
        super().__init__()
        if len(channels) < 2:
            raise DfcompressError(f"channels={channels!r} needs a stem width and >= 1 block")
        if num_classes < 1 or in_chans < 1:
            raise DfcompressError(
                f"num_classes={num_classes!r}, in_chans={in_chans!r}: both must be >= 1"
            )
        self.stem_conv = nn.Conv2d(in_chans, channels[0], 3, 2, 1, bias=False)
        self.stem_norm = nn.BatchNorm2d(channels[0])
        blocks: list[nn.Module] = []
        for i in range(1, len(channels)):
            grows = channels[i] != channels[i - 1]
            stride = 2 if grows and i > 1 else 1
            blocks.append(
                BNextBlock(channels[i - 1], channels[i], stride, elm_attention=i % 2 == 0)
            )
        self.blocks = nn.Sequential(*blocks)
        self.head_act = nn.PReLU(channels[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.num_classes = num_classes
        if type(self) is BNext:  # built from the class, it still records how to rebuild it
            set_constructor(
                self,
                BNext,
                channels=tuple(int(c) for c in channels),
                num_classes=num_classes,
                in_chans=in_chans,
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (after the head's PReLU), e.g. for Grad-CAM."""
        chans = self.stem_conv.in_channels
        if x.dim() != 4 or x.shape[1] != chans:
            raise DfcompressError(
                f"BNext expects (N, {chans}, H, W) input, got shape {list(x.shape)}"
            )
        x = self.stem_norm(self.stem_conv(x))
        features: Tensor = self.head_act(self.blocks(x))
        return features

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)``."""
        logits: Tensor = self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))
        return logits


@register_factory
def bnext(variant: Variant = "tiny", num_classes: int = 1, in_chans: int = 3) -> BNext:
    """Build a BNext of the given size, randomly initialised.

    Parameter counts with ``num_classes=1000``: tiny 30.9M, small 68.6M,
    middle 134.5M, large 326.6M. The model records its constructor, so
    :func:`dfcompress.save` / :func:`dfcompress.load` can rebuild it.

    Args:
        variant: ``"tiny"``, ``"small"``, ``"middle"`` or ``"large"``.
        num_classes: classifier outputs (1 = a single fake-vs-real logit).
        in_chans: input channels (3 for RGB; more for stacked input features).

    >>> net = bnext("tiny", num_classes=2)
    >>> type(net.fc), net.fc.out_features
    (<class 'torch.nn.modules.linear.Linear'>, 2)
    """
    if variant not in STAGE_CHANNELS:
        raise DfcompressError(
            f"variant={variant!r} is unknown: use one of {', '.join(get_args(Variant))}"
        )
    model = BNext(STAGE_CHANNELS[variant], num_classes=num_classes, in_chans=in_chans)
    set_constructor(
        model,
        "dfcompress.models.bnext:bnext",
        variant=variant,
        num_classes=num_classes,
        in_chans=in_chans,
    )
    return model


@register_factory
def bnext_tiny(num_classes: int = 1, in_chans: int = 3) -> BNext:
    """``bnext("tiny", ...)``."""
    return bnext("tiny", num_classes, in_chans)


@register_factory
def bnext_small(num_classes: int = 1, in_chans: int = 3) -> BNext:
    """``bnext("small", ...)``."""
    return bnext("small", num_classes, in_chans)


@register_factory
def bnext_middle(num_classes: int = 1, in_chans: int = 3) -> BNext:
    """``bnext("middle", ...)``."""
    return bnext("middle", num_classes, in_chans)


@register_factory
def bnext_large(num_classes: int = 1, in_chans: int = 3) -> BNext:
    """``bnext("large", ...)``."""
    return bnext("large", num_classes, in_chans)


def pack_binary(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Store every :class:`BinaryConv2d` of ``model`` at 1 bit per weight (inference-only).

    Returns a new model in eval mode (``model`` itself with ``inplace=True``) whose
    outputs are identical to ``model.eval()``'s.

    >>> net = BNext((8, 16, 32)).eval()
    >>> x = torch.randn(1, 3, 32, 32)
    >>> torch.equal(pack_binary(net)(x), net(x))
    True
    """
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    if not binary:
        raise DfcompressError(f"{type(model).__name__} has no BinaryConv2d layer to pack")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    for m in out.modules():
        if isinstance(m, BinaryConv2d):
            m.pack()
    return out


def deployed_size_bytes(model: nn.Module, *, folded: bool = True) -> int:
    """Bytes of the model with binary weights at 1 bit and every other value at 32 bits.

    Each :class:`BinaryConv2d` counts as its packed sign bits (``ceil(n / 8)``
    bytes) and every other parameter at 4 bytes. With ``folded=True`` (the
    default, and the BNext paper's accounting) that is all: at deployment the
    per-channel weight scales ``alpha`` and the BatchNorm running statistics
    fold into each BatchNorm's per-channel affine, which is already counted.
    With ``folded=False`` the size is that of the unfolded packed model: the
    float32 scales and the floating-point buffers (running statistics) are
    added. Integer bookkeeping buffers (``num_batches_tracked``) never count.
    Packed and unpacked models report the same size. With 1000 classes and
    ``folded=True``: tiny 13.3, small 26.7, middle 46.5, large 106.2 MiB.

    Args:
        model: any module; only its :class:`BinaryConv2d` layers count at 1 bit.
        folded: count scales and running statistics as folded away (see above).

    >>> with torch.device("meta"):  # sizes only: no memory, no initialisation
    ...     net = bnext("tiny", num_classes=1000)
    >>> round(deployed_size_bytes(net) / 2**20, 1)
    13.3
    >>> small = BNext((8, 16, 32))
    >>> deployed_size_bytes(pack_binary(small)) == deployed_size_bytes(small)
    True
    """
    total = 0
    binary_tensors: set[int] = set()
    for m in model.modules():
        if isinstance(m, BinaryConv2d):
            total += (m.weight_numel + 7) // 8
            if not folded:
                total += 4 * m.out_channels
            for t in (m.weight, m.weight_bits, m.weight_scale):
                if t is not None:
                    binary_tensors.add(id(t))
    tensors: list[Tensor] = list(model.parameters())
    if not folded:
        tensors += [b for b in model.buffers() if b.is_floating_point()]
    seen: set[int] = set()
    for t in tensors:
        if id(t) in binary_tensors or id(t) in seen:
            continue
        seen.add(id(t))
        total += 4 * t.numel()
    return total
