"""Small networks of the shapes the XNNPACK target must handle (32-64 px inputs)."""

from __future__ import annotations

import torch
from torch import nn


def quantized_for_xnnpack(
    net: nn.Module, shape: tuple[int, ...], n_calib: int, n_test: int
) -> tuple[nn.Module, torch.Tensor]:
    """``net``'s int8 model for the xnnpack target, calibrated on ``n_calib`` normal
    inputs of ``shape``, and ``n_test`` held-out inputs drawn after them (seed 1)."""
    import dfcompress

    g = torch.Generator().manual_seed(1)
    calib = torch.randn(n_calib, *shape, generator=g)
    test = torch.randn(n_test, *shape, generator=g)
    q = dfcompress.quantize(net, "int8", calibration=calib, target="xnnpack", progress=False)
    return q, test


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class ResBlock(nn.Module):
    """A ResNet basic block: conv/BN/ReLU, conv/BN, residual add, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + y)


class SEBlock(nn.Module):
    """Depthwise conv, SiLU, a squeeze-excitation gate (mul) and a residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.bn(self.dw(x)))
        gate = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(y.mean((2, 3), True)))))
        return x + self.pw(y * gate)


def resnet_like(c: int = 16, classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        ResBlock(c),
        ResBlock(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, classes),
    )
    return randomize_bn(net)


def se_silu_net(c: int = 16) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1),
        nn.SiLU(),
        SEBlock(c),
        SEBlock(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 1),
    )
    return randomize_bn(net)


class TinyViT(nn.Module):
    """Patch embedding, one pre-norm transformer block, mean pooling, a linear head."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 2)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(1))
