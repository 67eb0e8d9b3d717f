"""Graph shapes XNNPACK runs differently from the eager graph, and what the target does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _xnnpack_nets import quantized_for_xnnpack, randomize_bn
from torch import Tensor, nn

pytest.importorskip("executorch")

import dfcompress
from dfcompress import models
from dfcompress.deploy import xnnpack as xnnpack_target


class _ResearchBinaryBlock(nn.Module):
    """A binary block as research code writes it: an estimator with no inference branch.

    Two branches concatenated, a sign activation trained through ``c - c.detach()``,
    and a BNext-style shortcut: the block input average-pooled (ceil mode: ExecuTorch's
    portable kernel runs it) and, through a float PReLU, pooled again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.binary = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.act = nn.PReLU(16)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        c = x.clamp(-1.5, 1.5)
        signs = torch.where(x >= 0, 1.0, -1.0) + (c - c.detach())
        y = self.norm(self.binary(signs))
        y = y * self.pool(self.act(x)) + self.pool(x)
        out: Tensor = self.head(y.mean(dim=(2, 3)))
        return out


def test_research_binary_block_exports_and_runs_as_its_eager_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = randomize_bn(_ResearchBinaryBlock())
    q, test = quantized_for_xnnpack(net, (8, 16, 16), 16, 64)
    graph_ops = {str(n.target) for n in q.graph.graph.nodes}
    assert not any("detach" in t for t in graph_ops)
    # Before: ExecuTorch 1.5.1 refused the file at its first run (shape propagation).
    art = dfcompress.export(q, tmp_path / "block.pte", test)
    assert art.agreement is not None and art.agreement.passed
    with torch.no_grad():
        ref, eager = net(test), q(test)
    assert torch.equal(art.run(test).argmax(1), eager.argmax(1))
    assert (eager.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


class _GlobalMean(nn.Module):
    """Conv, global mean over 8x8 (it shares the conv output's range), flatten (it
    shares the mean's: XNNPACK refuses the file if the two ranges differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(x).mean(dim=(2, 3), keepdim=True)
        return torch.flatten(pooled, 1)


@pytest.mark.parametrize("nudge", [True, False])
def test_global_mean_codes_are_the_files(
    nudge: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not nudge:
        monkeypatch.setattr(xnnpack_target, "_break_average_ties", lambda graph: 0)
    torch.manual_seed(0)
    net = _GlobalMean().eval()
    q, test = quantized_for_xnnpack(net, (8, 8, 8), 32, 256)
    art = dfcompress.export(q, tmp_path / "mean.pte", test[:8], check=False)
    with torch.no_grad():
        eager = q(test)
    differ = int(((art.run(test) - eager).abs() > 1e-6).sum())
    if nudge:
        assert differ == 0
    else:  # the exact halves the graph and XNNPACK round apart
        assert differ > 0


def test_binary_weights_are_constants_in_both_files(tmp_path: Path) -> None:
    # BNext computes each binary conv's weight from its latent float weight at run time.
    torch.manual_seed(0)
    net = randomize_bn(models.BNext((64, 128, 256, 256), num_classes=1))  # 0.94M weights
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(8, 3, 32, 32, generator=g)
    q = dfcompress.quantize(net, "int8", calibration=calib, target="xnnpack", progress=False)
    flt = dfcompress.export(net, tmp_path / "float.pte", calib)
    int8 = dfcompress.export(q, tmp_path / "int8.pte", calib)
    # Before: the float file ran every binary conv in ExecuTorch's portable kernels
    # (BNext-tiny at 224 px: 13 s an image), and the int8 file also held the folded
    # float weights and sign masks (1.4x the float file's size).
    assert "convolution" not in flt.details["non_delegated"]
    assert int8.size_bytes < 0.4 * flt.size_bytes
    assert flt.agreement is not None and flt.agreement.passed


@pytest.mark.parametrize("rewrite", [True, False])
def test_sign_activations_run_inside_xnnpack(
    rewrite: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not rewrite:
        monkeypatch.setattr(xnnpack_target, "delegate_signs", lambda graph: 0)
    torch.manual_seed(0)
    net = randomize_bn(models.BNext((16, 32, 64, 64), num_classes=1))
    with torch.no_grad():
        net.fc.weight.mul_(20)  # logits spread like a trained detector's
    q, test = quantized_for_xnnpack(net, (3, 32, 32), 16, 64)
    art = dfcompress.export(q, tmp_path / "bnext.pte", test, check=rewrite)
    signs_outside = art.details["non_delegated"].get("ge.Scalar", 0)
    with torch.no_grad():
        agree = float(((q(test) > 0) == (net(test) > 0)).float().mean())
    if rewrite:  # the whole network is one XNNPACK partition
        assert art.details["non_delegated"] == {} and art.details["delegates"] == 1
        # and the file passes the default check (>= 0.995 of its decisions)
        assert art.agreement is not None and art.agreement.passed
    else:  # each of the 8 signs between two partitions
        assert signs_outside == 8 and art.details["delegates"] >= 7
    assert agree >= 0.9
