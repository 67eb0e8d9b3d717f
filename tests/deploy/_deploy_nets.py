"""Small networks of the families deployed detectors are built from, with their inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfcompress.deploy import Artifact
from dfcompress.models import BNext, efficientnet, mobilenet_v2
from dfcompress.models._binary import BinaryActivation


def _trained_looking(net: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms away from their initial values."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def resnet_net() -> nn.Module:
    torch.manual_seed(0)
    return _trained_looking(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            Residual(16),
            Residual(16),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )
    )


class SEBlock(nn.Module):
    """EfficientNet's MBConv: expand, depthwise, squeeze-excitation, project, SiLU throughout."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.dw = nn.Sequential(
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.SiLU()
        )
        self.se_reduce, self.se_expand = nn.Conv2d(h, c // 2, 1), nn.Conv2d(c // 2, h, 1)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.se_expand(nn.functional.silu(self.se_reduce(y.mean((2, 3), True)))))
        return x + self.project(y * s)


def se_silu_net() -> nn.Module:
    torch.manual_seed(1)
    return _trained_looking(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.SiLU(),
            SEBlock(16),
            SEBlock(16),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )
    )


def mobilenet_net() -> nn.Module:
    torch.manual_seed(2)
    net = _trained_looking(mobilenet_v2(num_classes=2))
    nn.init.normal_(net.classifier[1].weight, 0.0, 0.2)
    return net


def efficientnet_net() -> nn.Module:
    """The full EfficientNet-B0 (depthwise 3x3 and 5x5, SE, SiLU), two classes."""
    torch.manual_seed(5)
    net = _trained_looking(efficientnet("b0", num_classes=2))
    nn.init.normal_(net.classifier.weight, 0.0, 0.2)
    return net


def bnext_net() -> nn.Module:
    torch.manual_seed(3)
    net = BNext((8, 16, 32), num_classes=1)
    for m in net.modules():  # latent biases away from zero, like a trained net
        if isinstance(m, BinaryActivation):
            m.bias.data.uniform_(-0.5, 0.5)
    return _trained_looking(net)


class _Encoder(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A two-block vision transformer: 4x4 patches, a class token, a linear head."""

    def __init__(self, d: int = 32, heads: int = 4, size: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.2)
        self.pos = nn.Parameter(torch.randn(1, (size // 4) ** 2 + 1, d) * 0.2)
        self.blocks = nn.Sequential(_Encoder(d, heads), _Encoder(d, heads))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 2)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


def vit_net() -> nn.Module:
    torch.manual_seed(4)
    return TinyViT().eval()


NETS = {
    "resnet": (resnet_net, 16),
    "se_silu": (se_silu_net, 16),
    "mobilenet_v2": (mobilenet_net, 32),
    "efficientnet_b0": (efficientnet_net, 32),
    "bnext": (bnext_net, 32),
    "vit": (vit_net, 16),
}
"""name -> (builder, input height and width)."""


def inputs(n: int, size: int, seed: int) -> Tensor:
    """A proxy batch: smooth images (neighbouring pixels correlated), not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x + 0.3 * torch.randn(n, 3, size, size, generator=g)


def wide_depthwise() -> nn.Module:
    """A depthwise conv with the large weights and biases of a folded pretrained one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1)).eval()
    with torch.no_grad():
        net[0].weight.mul_(20)
        net[0].bias.normal_(0, 2)
    return net


def assert_int8_file_is_the_eager_model(
    net: nn.Module, q: nn.Module, art: Artifact, test: Tensor
) -> Tensor:
    """What a user checks after ``quantize`` + ``export`` of an int8 model.

    The file passed export's own agreement check at the 99.5 % decision floor, and
    the eager int8 model is a quantized copy of ``net``, not another network.
    Returns the eager int8 model's outputs on ``test``.
    """
    assert art.agreement is not None and art.agreement.passed
    assert art.agreement.agreement is not None and art.agreement.agreement >= 0.995
    with torch.no_grad():
        ref, got = net(test), q(test)
    assert (ref - got).abs().max() <= 0.25 * ref.abs().max() + 0.05
    return got
