"""Convolution + ReLU6 on the xnnpack target: one int8 range after the clamp."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _xnnpack_nets import randomize_bn
from torch import fx, nn

pytest.importorskip("executorch")

import dfcompress
from dfcompress.deploy import _xnnpack_plan
from dfcompress.deploy._xnnpack_observers import ACT_RANGE
from dfcompress.quant import Float

G = torch.Generator().manual_seed(0)
CALIB = torch.randn(16, 3, 32, 32, generator=G)
TEST = torch.randn(20, 3, 32, 32, generator=G)
KW = {"calibration": CALIB, "target": "xnnpack", "progress": False, "bias_correction": False}
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default


class Inverted(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand, depthwise, 1x1 project, add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c))
        self.act1 = nn.ReLU6(inplace=True)
        self.dw = nn.Sequential(
            nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c, bias=False),
            nn.BatchNorm2d(4 * c),
        )
        self.project = nn.Sequential(nn.Conv2d(4 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.dw(self.act1(self.expand(x))))  # exported as relu6
        return x + self.project(y)


class TwoUsers(nn.Module):
    """A convolution read by a ReLU6 and by an add: the clamp cannot be fused."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y) + y


def mobilenet_like(c: int = 8) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU6(inplace=True),
        Inverted(c),
        Inverted(c),
        TwoUsers(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )
    return randomize_bn(net)


def _is_clamp(n: fx.Node) -> bool:
    return n.op == "call_function" and ("hardtanh" in str(n.target) or "relu6" in str(n.target))


def _clamp_ranges(graph: fx.GraphModule) -> list[tuple[bool, int]]:
    """For each ReLU6: (reads a convolution directly, zero point of its output code)."""
    out = []
    for n in graph.graph.nodes:
        if not _is_clamp(n):
            continue
        (q,) = n.users
        assert q.target == QUANTIZE
        source = n.args[0]
        out.append(("conv" in str(source.target), int(q.args[2])))
    return out


def relu6_chain(c: int = 8) -> nn.Module:
    """Conv/BN/ReLU6 five times, BatchNorm statistics fitted to the data as in training."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(5):
        layers += [nn.Conv2d(3 if i == 0 else c, c, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(c, momentum=None), nn.ReLU6()]
    net = nn.Sequential(*layers, nn.Conv2d(c, 4, 1)).train()
    with torch.no_grad():
        net(CALIB)
    return net.eval()


def _steps(graph: fx.GraphModule) -> list[float]:
    return [float(n.args[1]) for n in graph.graph.nodes if n.target == QUANTIZE]


def test_relu6_outputs_use_every_code_and_lower_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nets = {"mobilenet": mobilenet_like(), "chain": relu6_chain()}
    fused = {k: dfcompress.quantize(net, "int8", **KW) for k, net in nets.items()}
    ranges = _clamp_ranges(fused["mobilenet"].graph)
    # the stem's and the blocks' ReLU6s follow their convolution directly: their ranges
    # start at 0 (zero point -128); TwoUsers' conv output is also read by the add, so a
    # quantize sits between and its ReLU6 shares that signed range
    assert ranges.count((True, ACT_RANGE[0])) == 5
    assert [z for c, z in ranges if not c] == [ranges[-1][1]] and ranges[-1][1] > ACT_RANGE[0]
    monkeypatch.setattr(_xnnpack_plan, "annotate_conv_clamp", lambda *a, **k: 0)
    stock = {k: dfcompress.quantize(net, "int8", **KW) for k, net in nets.items()}
    # ExecuTorch's own annotation: a quantize between every conv and its ReLU6
    assert not any(c for c, _ in _clamp_ranges(stock["mobilenet"].graph))
    # each ReLU6 output of the chain gets a finer step than the signed range gave it
    # (the stock graph has a pair of quantizes per ReLU6: at the conv and after the clamp)
    ours, theirs = _steps(fused["chain"].graph), _steps(stock["chain"].graph)
    assert len(ours) == 7 and len(theirs) == 12
    assert all(a < 0.75 * b for a, b in zip(ours[1:6], theirs[1:11:2], strict=True))
    with torch.no_grad():
        ref = nets["chain"](TEST)
        err_fused = (fused["chain"](TEST) - ref).pow(2).mean()
        err_stock = (stock["chain"](TEST) - ref).pow(2).mean()
    assert err_fused < 0.85 * err_stock


def test_fused_clamp_runs_inside_xnnpack_as_in_eager(tmp_path: Path) -> None:
    net = mobilenet_like()
    q = dfcompress.quantize(net, "int8", **KW)
    art = dfcompress.export(q, tmp_path / "m.pte", TEST)
    assert art.agreement is not None and art.agreement.passed
    # nothing but the flatten left outside the delegate: each clamp went into its conv
    assert set(art.details["non_delegated"]) <= {"view_copy"}
    with torch.no_grad():
        torch.testing.assert_close(art.run(TEST), q(TEST), rtol=0, atol=0.02)


def test_qat_graph_keeps_the_clamp_fusion(tmp_path: Path) -> None:
    net = mobilenet_like()
    ft = dfcompress.distill_finetune(net, [CALIB], epochs=1, lr=1e-4, progress=False)
    q = dfcompress.quantize(net, "int8", finetune=ft, **KW)
    assert _clamp_ranges(q.graph).count((True, ACT_RANGE[0])) == 5
    art = dfcompress.export(q, tmp_path / "qat.pte", TEST)
    assert art.agreement is not None and art.agreement.passed


def test_layer_kept_float_keeps_its_clamp_float() -> None:
    net = mobilenet_like()
    rules = [("stem", Float()), ("all", "int8")]
    q = dfcompress.quantize(net, rules, **KW)
    stem = next(n for n in q.graph.graph.nodes if _is_clamp(n))
    conv = stem.args[0]
    # the stem conv reads the float input and float weights: nothing dequantized before it
    assert conv.args[0].op == "placeholder" and conv.args[1].op == "get_attr"
    rows = {r.name: r.action for r in q.dfc_summary_rows}
    assert rows["0"] == "float" and rows["3.expand.0"] == "int8"
    # the int8 ReLU6s still get their ranges after the clamp
    assert _clamp_ranges(q.graph).count((True, ACT_RANGE[0])) == 5
