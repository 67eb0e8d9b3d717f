"""Reconstruction after L1 pruning: the same sparsity per layer, closer to the unpruned model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_nets import TinyMobileNet, TinyViT, one_thread  # noqa: F401 - autouse fixture
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError
from dfcompress.prune import sparsity
from dfcompress.prune._reconstruct import obs_prune
from dfcompress.quant._gptq import gram


def _randomize_bn(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval()


def _zeros_per_layer(net: nn.Module) -> dict[str, int]:
    return {
        n: int((m.weight == 0).sum())
        for n, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@pytest.mark.parametrize("make", [TinyMobileNet, TinyViT], ids=["mobilenet", "vit"])
def test_reconstruction_keeps_each_layers_sparsity_and_tracks_the_dense_model(make: type) -> None:
    torch.manual_seed(0)
    net = _randomize_bn(make())
    calib, held = torch.randn(64, 3, 16, 16), torch.randn(64, 3, 16, 16)
    plain = dfc.prune(net, 0.5, calibration=calib, progress=False)
    rebuilt = dfc.prune(net, 0.5, calibration=calib, reconstruct=True, progress=False)
    assert sparsity(rebuilt) == pytest.approx(sparsity(plain), abs=1e-9)
    assert _zeros_per_layer(rebuilt) == _zeros_per_layer(plain)
    with torch.no_grad():
        ref = net(held)
        assert F.mse_loss(rebuilt(held), ref) < 0.7 * F.mse_loss(plain(held), ref)


def test_reconstruction_with_sensitivity_and_inplace() -> None:
    torch.manual_seed(0)
    net = _randomize_bn(TinyMobileNet())
    calib = torch.randn(32, 3, 16, 16)
    held = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        ref = net(held)
    plain = dfc.prune(net, 0.5, sensitivity=True, calibration=calib, progress=False)
    target = _randomize_bn(TinyMobileNet())
    target.load_state_dict(net.state_dict())
    out = dfc.prune(
        target,
        0.5,
        sensitivity=True,
        calibration=calib,
        reconstruct=True,
        inplace=True,
        progress=False,
    )
    assert out is target
    assert sparsity(target) == pytest.approx(sparsity(plain), abs=0.01)
    with torch.no_grad():
        assert F.mse_loss(target(held), ref) < F.mse_loss(plain(held), ref)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "pass calibration="),
        ({"method": "structured"}, "method='l1'"),
        ({"steps": 2}, "one-shot"),
        ({"reconstruct": "yes"}, "reconstruct"),
    ],
)
def test_reconstruction_refuses_what_it_cannot_do(kwargs: dict[str, object], match: str) -> None:
    net = TinyMobileNet().eval()
    options: dict[str, object] = {"reconstruct": True, "progress": False}
    if kwargs:
        options["calibration"] = torch.randn(4, 3, 16, 16)
    options.update(kwargs)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(DfcompressError, match=match):
        dfc.prune(net, 0.5, **options)  # type: ignore[arg-type]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 6),
    inp=st.integers(2, 20),
    n=st.integers(1, 50),
    amount=st.floats(0.1, 0.9),
    choose=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_obs_prune_never_worse_than_magnitude_and_keeps_the_count(
    out: int, inp: int, n: int, amount: float, choose: bool, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen)
    x = torch.randn(n, inp, generator=gen)
    x[:, torch.rand(inp, generator=gen) < 0.2] = 0.0  # dead inputs
    k = round(amount * w.numel())
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[torch.sort(w.abs().flatten(), stable=True).indices[:k]] = False
    keep = keep.view_as(w)
    h = gram(x, None)
    new, e_plain, e_kept = obs_prune(w, keep, h, choose=choose)
    assert float(e_kept.sum()) <= float(e_plain.sum()) * (1 + 1e-9) + 1e-12
    assert torch.isfinite(new).all()
    zeros = int((new == 0).sum())
    assert zeros >= k  # as many pruned weights (more only where a kept one is exactly 0)
    if not choose:
        assert bool((new[~keep] == 0).all())


def test_a_layer_seen_on_too_few_samples_keeps_magnitude_pruning() -> None:
    # 8 calibration rows for 16 weights per output row: a fit would match those 8 only.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 4)).eval()
    few, many = torch.randn(8, 16), torch.randn(128, 16)
    plain = dfc.prune(net, 0.5, calibration=few, progress=False)
    kept = dfc.prune(net, 0.5, calibration=few, reconstruct=True, progress=False)
    assert torch.equal(kept[0].weight, plain[0].weight)
    fitted = dfc.prune(net, 0.5, calibration=many, reconstruct=True, progress=False)
    assert not torch.equal(fitted[0].weight, plain[0].weight)
