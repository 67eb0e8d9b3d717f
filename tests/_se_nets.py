"""Small nets with squeeze-and-excitation branches for the selector tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Fn = Callable[[Tensor], Tensor]


class Squash(nn.Module):
    """Names unrelated to SE on purpose: the selector must not rely on them."""

    def __init__(self, c: int, pool: Fn, act: nn.Module, gate: Fn) -> None:
        super().__init__()
        self.alpha = nn.Conv2d(c, c // 4, 1)
        self.nonlin = act
        self.beta = nn.Conv2d(c // 4, c, 1)
        self.pool, self.gate = pool, gate

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.beta(self.nonlin(self.alpha(self.pool(x)))))


class Stage(nn.Module):
    def __init__(self, c: int, inner: nn.Module) -> None:
        super().__init__()
        self.mixer = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.widget = inner
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.widget(torch.relu(self.mixer(x))))


def net_with(*inner: nn.Module, c: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        *[Stage(c, m) for m in inner],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 2),
    )


def torch_mean(x: Tensor) -> Tensor:
    return torch.mean(x, dim=(2, 3), keepdim=True)
