"""The "se" selector finds squeeze-and-excitation branches by what the forward does."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _se_nets import Fn, Squash, net_with, torch_mean
from dfcompress.models import bnext
from dfcompress.models.bnext import STAGE_CHANNELS
from dfcompress.select import find_se, preset, select


def test_unrelated_names_and_torch_mean_select_exactly_the_se_convs() -> None:
    net = net_with(Squash(16, torch_mean, nn.ReLU(), torch.sigmoid), nn.Identity())
    assert list(select(net, "se")) == ["1.widget.alpha", "1.widget.beta"]
    assert find_se(net)[0].gate == "sigmoid"


def _relu6_hard_sigmoid(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0


def _inplace_hard_sigmoid(x: Tensor) -> Tensor:
    return x.add_(3.0).clamp_(0.0, 6.0).div_(6.0)


POOLS: dict[str, Fn] = {
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d(1),
    "F.adaptive_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x, 1),
    "mean keepdim": lambda x: x.mean((2, 3), keepdim=True),
    "mean of means": lambda x: x.mean(-1, keepdim=True).mean(-2, keepdim=True),
    "avg_pool2d over the map": lambda x: F.avg_pool2d(x, x.shape[-2:]),
}
ACTS: dict[str, nn.Module] = {
    "ReLU inplace": nn.ReLU(inplace=True),
    "SiLU": nn.SiLU(),
    "PReLU": nn.PReLU(4),
    "GELU": nn.GELU(),
    "none": nn.Identity(),
}
GATES: dict[str, Fn] = {
    "nn.Sigmoid": nn.Sigmoid(),
    "Tensor.sigmoid": Tensor.sigmoid,
    "nn.Hardsigmoid": nn.Hardsigmoid(),
    "F.hardsigmoid": F.hardsigmoid,
    "relu6(x+3)/6": _relu6_hard_sigmoid,
    "add_.clamp_.div_": _inplace_hard_sigmoid,
}


@pytest.mark.parametrize("pool", POOLS)
def test_every_global_average_pool_counts(pool: str) -> None:
    net = net_with(Squash(16, POOLS[pool], nn.ReLU(), torch.sigmoid))
    assert list(select(net, "se")) == ["1.widget.alpha", "1.widget.beta"]


@pytest.mark.parametrize("act", ACTS)
def test_any_activation_between_the_two_layers(act: str) -> None:
    net = net_with(Squash(16, torch_mean, ACTS[act], torch.sigmoid))
    assert list(select(net, "se")) == ["1.widget.alpha", "1.widget.beta"]


@pytest.mark.parametrize("gate", GATES)
def test_sigmoid_and_hard_sigmoid_gates(gate: str) -> None:
    net = net_with(Squash(16, torch_mean, nn.ReLU(), GATES[gate]))
    assert list(select(net, "se")) == ["1.widget.alpha", "1.widget.beta"]


class LinearSE(nn.Module):
    """Flattened pooling, two Linear layers, gate reshaped and broadcast with expand_as."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.down = nn.Linear(c, c // 4, bias=False)
        self.up = nn.Linear(c // 4, c, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1).view(b, c))))
        return x * torch.sigmoid(y).view(b, c, 1, 1).expand_as(x)


def test_linear_based_se() -> None:
    net = net_with(LinearSE(16))
    assert list(select(net, "se")) == ["1.widget.down", "1.widget.up"]


class Eca(nn.Module):
    """ECA: one 1-D conv across the pooled channels, no reduction layer."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.k(x.mean((2, 3)).unsqueeze(1))
        return x * y.transpose(1, 2).unsqueeze(-1).sigmoid()


class EffectiveSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_one_layer_gates_count() -> None:
    net = net_with(Eca(), EffectiveSE(16))
    assert list(select(net, "se")) == ["1.widget.k", "2.widget.fc"]
    assert [b.gate for b in find_se(net)] == ["sigmoid", "hardsigmoid"]


class GatesItsInputsKin(nn.Module):
    """BNext-style: the gate is computed from a mix of x and y and multiplies y."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(c, c, 3, padding=1)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return torch.sigmoid(self.se(0.5 * x + 0.5 * y)) * y


def test_gate_may_multiply_a_tensor_the_pooled_input_derives_from() -> None:
    assert list(select(net_with(GatesItsInputsKin(16)), "se")) == ["1.widget.se.1", "1.widget.se.3"]


class SpatialAttention(nn.Module):
    """1x1 conv -> sigmoid -> multiply, without pooling: not SE."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.b(torch.relu(self.a(x))))


class ChannelPooledAttention(nn.Module):
    """CBAM's spatial gate: pooled over channels, not over positions: not SE."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.conv(x.mean(1, keepdim=True)))


class PooledSiLU(nn.Module):
    """Pool -> conv -> x * sigmoid(x) (a SiLU) -> conv, then added: no gate of the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x.mean((2, 3), keepdim=True))
        return x + self.b(y * torch.sigmoid(y))


class UngatedBottleneck(nn.Module):
    """Pool -> conv -> ReLU -> conv -> multiply, but no squashing gate: not SE."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.b(torch.relu(self.a(x.mean((2, 3), keepdim=True))))


@pytest.mark.parametrize(
    "inner",
    [SpatialAttention(16), ChannelPooledAttention(), PooledSiLU(16), UngatedBottleneck(16)],
    ids=lambda m: type(m).__name__,
)
def test_look_alikes_are_not_selected(inner: nn.Module) -> None:
    assert select(net_with(inner), "se") == {}


def test_a_classifier_on_pooled_features_is_not_se() -> None:
    head = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 1),
        nn.Sigmoid(),
    )
    assert select(head, "se") == {}


def test_a_pooled_head_gating_features_of_another_branch_is_not_se() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
            self.other = nn.Linear(3, 8)

        def forward(self, x: Tensor) -> Tensor:
            pooled = self.stem(x).mean((2, 3))
            score = torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))
            return score * self.other(torch.ones(x.shape[0], 3))  # unrelated to the pooled map

    assert select(TwoHeads(), "se") == {}


def _processors(channels: tuple[int, ...]) -> int:
    return sum(1 + c_out // c_in for c_in, c_out in itertools.pairwise(channels))


def test_dfcompress_bnext_every_se_conv_found_by_structure() -> None:
    net = bnext("tiny", num_classes=2)
    expected = 2 * _processors(STAGE_CHANNELS["tiny"])
    assert expected == 62
    structural = [name for b in find_se(net, example=(1, 3, 32, 32)) for name in b.layers]
    assert len(structural) == len(set(structural)) == expected
    assert all(name.endswith((".se.reduce", ".se.expand")) for name in structural)
    assert set(select(net, preset("se", example=(1, 3, 32, 32)))) == set(structural)


def test_found_after_a_torchscript_submodule() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()))
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3), scripted, Squash(16, torch_mean, nn.ReLU(), torch.sigmoid)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(select(net, "se")) == ["2.alpha", "2.beta"]


@torch.jit.script
def _scripted_hard_sigmoid(x: Tensor) -> Tensor:
    return (x + 3).clamp(0, 6) / 6


class OpaqueGate(nn.Module):
    """Its ops run in TorchScript, out of the recorder's sight: judged by its output range."""

    def forward(self, x: Tensor) -> Tensor:
        return _scripted_hard_sigmoid(x)


@torch.jit.script
def _scripted_shifted_relu6(x: Tensor) -> Tensor:
    return (x + 3).clamp(0, 6)


class OpaqueUnbounded(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _scripted_shifted_relu6(x)


def test_an_opaque_gate_counts_when_its_output_lies_in_0_1() -> None:
    gated = net_with(Squash(16, torch_mean, nn.ReLU(), OpaqueGate()))
    assert list(select(gated, "se")) == ["1.widget.alpha", "1.widget.beta"]
    assert select(net_with(Squash(16, torch_mean, nn.ReLU(), OpaqueUnbounded())), "se") == {}
