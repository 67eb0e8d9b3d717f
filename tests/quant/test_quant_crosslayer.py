"""Cross-layer equalization: the float model is unchanged, the weight ranges are evened out."""

from __future__ import annotations

import copy

import torch
from torch import nn

import dfcompress as dfc
from dfcompress.models import mobilenet_v2
from dfcompress.quant import IntQuant, PerTensor, quantize
from dfcompress.quant._bnfold import fold_batchnorms
from dfcompress.quant._crosslayer import ChannelClamp, equalize_pairs


def _pretrained_like(seed: int = 0) -> nn.Module:
    """A MobileNetV2 whose BatchNorms carry uneven statistics, as trained ones do."""
    torch.manual_seed(seed)
    net = mobilenet_v2(num_classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_var.copy_(torch.rand(n) ** 2 * 2 + 1e-2)  # some channels narrow
                m.running_mean.copy_(torch.randn(n) * 0.3)
                m.weight.copy_(torch.rand(n) * 1.5 + 0.05)
                m.bias.copy_(torch.randn(n) * 0.5)
    return net.eval()


def _convs(net: nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_equalization_leaves_a_pretrained_like_mobilenet_unchanged_in_float() -> None:
    net = _pretrained_like()
    fold_batchnorms(net, _convs(net))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        pairs = equalize_pairs(net, _convs(net))
        after = net(x)
    # 33 inside the blocks, the stem's, and the two block boundaries without a residual
    assert len(pairs) == 36
    assert any(isinstance(m, ChannelClamp) for m in net.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_equalization_gives_both_layers_the_same_range_in_each_channel() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(4, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3), nn.ReLU(), nn.Conv2d(3, 2, 1)
    ).eval()
    with torch.no_grad():
        net[2].weight.mul_(torch.tensor([100.0, 1.0, 0.01]).reshape(3, 1, 1, 1))
    equalize_pairs(net, {"0", "2", "4"}, iterations=20)
    rows = net[2].weight.detach().abs().reshape(3, -1).amax(1)
    before = net[0].weight.detach().abs().reshape(3, -1).amax(1)
    after = net[4].weight.detach().abs().amax(dim=(0, 2, 3))
    # a depthwise conv between two layers ends with the geometric mean of their ranges
    torch.testing.assert_close(rows, before, rtol=1e-3, atol=0)
    torch.testing.assert_close(rows, after, rtol=1e-3, atol=0)
    assert float(rows.max() / rows.min()) < 100.0  # 10,000 before


def _uneven_depthwise_block() -> nn.Module:
    """Conv/BN/ReLU6, depthwise conv/BN/ReLU6, conv: depthwise ranges uneven once folded."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 4, 1),
    )
    with torch.no_grad():
        net[4].running_var.copy_(torch.logspace(-5, 1, 8))
        net[4].weight.copy_(torch.linspace(0.5, 1.5, 8))
    return net.eval()


def test_equalization_lowers_the_error_of_per_tensor_weights_and_survives_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = _uneven_depthwise_block()
    x = torch.randn(8, 3, 16, 16)
    cfg = IntQuant(8, PerTensor())
    plain = quantize(net, cfg, progress=False)
    cle = quantize(net, cfg, progress=False, cross_layer_equalization=True)
    with torch.no_grad():
        ref = net(x)
        err_plain = float((plain(x) - ref).pow(2).mean())
        err_cle = float((cle(x) - ref).pow(2).mean())
    assert err_cle < err_plain / 3
    dfc.save(cle, tmp_path / "cle.dfc")
    again = dfc.load(tmp_path / "cle.dfc")
    with torch.no_grad():
        torch.testing.assert_close(again(x), cle(x))


def test_a_relu6_between_equalized_layers_becomes_a_clamp_at_six_over_the_factor() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU6(), nn.Conv2d(3, 2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).reshape(3, 2, 1, 1))
        net[2].weight.fill_(1.0)
    x = torch.full((1, 2, 1, 1), 3.0)  # channel 0 is 12 before the clamp: ReLU6 clips it
    before = net(x)
    equalize_pairs(copy_net := copy.deepcopy(net), {"0", "2"})
    clamp = copy_net[1]
    assert isinstance(clamp, ChannelClamp)
    # s = sqrt(r1 / r2) = (2, 1, 1): channel 0's clamp moves from 6 to 3
    torch.testing.assert_close(clamp.upper, torch.tensor([3.0, 6.0, 6.0]))
    torch.testing.assert_close(copy_net(x), before)
