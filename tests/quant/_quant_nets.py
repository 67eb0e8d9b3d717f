"""Small networks of the shapes the quantizer must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.quant.modules import QuantLayer


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.pw(x)).mean((2, 3))
        return self.fc(x)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(1))


class TinyVideoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm3d(8),
            nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            assert m.running_var is not None
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class _Basic(nn.Module):
    """A ResNet basic block: two 3x3 conv/BN pairs and an in-place residual add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


def resnet34_like(width: int = 64, num_classes: int = 2) -> nn.Module:
    """ResNet-34's layout (3-4-6-3 basic blocks) from plain torch.nn layers, BN randomized."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for mult, blocks, stride in ((1, 3, 1), (2, 4, 2), (4, 6, 2), (8, 3, 2)):
        for i in range(blocks):
            layers.append(_Basic(cin, width * mult, stride if i == 0 else 1))
            cin = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    torch.manual_seed(0)
    net = nn.Sequential(*layers)
    return randomize_bn(net)


def dw_net() -> nn.Module:
    """Conv, depthwise conv, pointwise conv and a Linear head (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def layer_inputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.__setitem__(n, a[0]))
        for n, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def layer_weight_errors(net: nn.Module, q: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each layer's output error, on the float model's input to it, from its weight alone."""
    layers = dict(q.named_modules())
    errors = {}
    for name, xin in layer_inputs(net, x).items():
        f, ql = net.get_submodule(name), layers[name]
        assert isinstance(ql, QuantLayer)
        with torch.no_grad():
            if isinstance(f, nn.Linear):
                out = F.linear(xin, ql.quantized_weight()) - F.linear(xin, f.weight)
            else:
                out = f._conv_forward(xin, ql.quantized_weight(), None) - f._conv_forward(
                    xin, f.weight, None
                )
        errors[name] = float(out.pow(2).mean())
    return errors


def flat_region_depthwise() -> nn.Conv2d:
    """Depthwise filters whose BatchNorm-folded responses to flat inputs nearly cancel
    (pretrained-like: edge and texture filters), seeded."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    with torch.no_grad():
        w = torch.randn(16, 1, 3, 3)
        conv.weight.copy_(w - w.mean((2, 3), keepdim=True) + 0.01 * torch.randn(16, 1, 1, 1))
    return conv


def same_scale_layers(a: nn.Module, b: nn.Module) -> list[tuple[QuantLayer, QuantLayer]]:
    """The quantized layers of two quantizations of one net, paired; their weight
    scales must be equal (a rounding mode chooses codes, never scales)."""
    pairs = list(
        zip(
            (m for m in a.modules() if isinstance(m, QuantLayer)),
            (m for m in b.modules() if isinstance(m, QuantLayer)),
            strict=True,
        )
    )
    for x, y in pairs:
        torch.testing.assert_close(y.weight_scale.float(), x.weight_scale.float())
    return pairs
