"""Layers are recognised by what they compute; layers left float are reported, never silent."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _quant_nets import randomize_bn
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError
from dfcompress.quant import QuantLayer


class SamePadConv2d(nn.Conv2d):
    """TensorFlow's "same" padding, computed once for a fixed image size, applied in forward."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, image: int = 32
    ) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)
        pad = max((math.ceil(image / stride) - 1) * stride + k - image, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class FixedFilter(nn.Conv2d):
    """A conv subclass whose forward ignores its own weight (a fixed blur)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.full((self.out_channels, 1, 3, 3), 1 / 9, dtype=x.dtype)
        return F.conv2d(x, k, None, 1, 1, 1, self.groups)


def same_pad_net() -> nn.Module:
    """An EfficientNet-like stem: every conv pads in its own forward."""
    torch.manual_seed(0)
    net = nn.Sequential(
        SamePadConv2d(3, 16, 3, stride=2),
        nn.BatchNorm2d(16),
        nn.SiLU(),
        SamePadConv2d(16, 16, 3, groups=16, image=16),
        nn.BatchNorm2d(16),
        nn.SiLU(),
        SamePadConv2d(16, 24, 1, image=16),
        nn.BatchNorm2d(24),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 2),
    )
    return randomize_bn(net)


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.aux_head = nn.Linear(8, 5)  # defined, never called by forward
        self.aux_conv = SamePadConv2d(8, 8, 3)  # likewise, with its own forward
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


X = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _float_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, dfc.FloatLayersWarning)]


@pytest.mark.parametrize(("config", "action"), [("int8", "int8"), ("int4", "int4")])
def test_subclass_with_own_padding_is_quantized(config: str, action: str) -> None:
    net = same_pad_net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = dfc.quantize(net, config, calibration=X, progress=False, pack=True)
    assert _float_warnings(caught) == []
    s = dfc.summary(q)
    assert s.quantized_share == 1.0
    assert [r.action for r in s] == [action] * 4
    assert [r.layer_type for r in s] == ["SamePadConv2d"] * 3 + ["Linear"]
    with torch.no_grad():
        ref, got = net(X), q(X)
    err = float((got - ref).abs().max())
    # Quantized (not bit-identical to float), and the padding still applies (close).
    assert 0 < err < 0.1 * float(ref.abs().max())


@pytest.mark.parametrize("config", ["fp16", "bf16"])
def test_subclass_with_own_padding_is_cast(config: str) -> None:
    net = same_pad_net()
    q = dfc.quantize(net, config, progress=False)
    assert dfc.summary(q).counts() == {config: 4}
    with torch.no_grad():
        assert torch.allclose(q(X), net(X), atol=0.02)


def test_subclass_with_own_padding_is_pruned() -> None:
    net = same_pad_net()
    p = dfc.prune(net, 0.5, progress=False)
    rows = dfc.summary(p).rows
    assert all(r.action == "pruned" and r.reason is None for r in rows)
    total = sum(r.params for r in rows)
    assert sum(r.sparsity * r.params for r in rows) == pytest.approx(0.5 * total, abs=1)
    with torch.no_grad():
        assert p(X).shape == (16, 2)  # the static padding still runs


def test_forward_that_ignores_its_weight_is_left_float_and_named() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        FixedFilter(4, 4, 3, padding=1, groups=4),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 2),
    )
    x = torch.randn(4, 3, 8, 8)
    with pytest.warns(
        dfc.FloatLayersWarning, match=r"1 selected layer stays float: 1 \(unsupported"
    ):
        q = dfc.quantize(net, "int8", calibration=x, progress=False)
    assert type(q[1]) is FixedFilter
    rows = {r.name: r for r in dfc.summary(q)}
    assert rows["1"].action == "float" and rows["1"].reason == "unsupported subclass"
    assert rows["0"].action == "int8" and rows["3"].action == "int8"
    with pytest.warns(dfc.FloatLayersWarning, match="prune: 1 selected layer"):
        p = dfc.prune(net, 0.5, progress=False)
    assert bool((p[1].weight != 0).all())


def test_unused_layer_stays_float_with_one_warning() -> None:
    net = randomize_bn(WithUnusedLayer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = dfc.quantize(net, "int8", calibration=X, progress=False)
    messages = _float_warnings(caught)
    assert len(messages) == 1 and "2 selected layers stay float" in messages[0]
    assert "aux_head (unused in forward), aux_conv (unused in forward)" in messages[0]
    rows = {r.name: r for r in dfc.summary(q)}
    for name in ("aux_head", "aux_conv"):
        assert rows[name].action == "float" and rows[name].reason == "unused in forward"
    assert type(q.aux_conv) is SamePadConv2d
    h = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(q.aux_conv(h), net.aux_conv(h))  # the float layer, as it was
    assert rows["conv"].action == "int8" and rows["fc"].action == "int8"
    with torch.no_grad():
        assert torch.allclose(q(X), net(X), atol=0.05)


def test_q8_recipe_works_on_a_model_with_an_unused_layer() -> None:
    net = randomize_bn(WithUnusedLayer())
    with pytest.warns(dfc.FloatLayersWarning, match="compress: 2 selected layers") as rec:
        q = dfc.compress(net, "q8", X, progress=False)
    assert len([w for w in rec if issubclass(w.category, dfc.FloatLayersWarning)]) == 1
    assert dfc.summary(q).counts() == {"int8": 2, "float": 2}


def test_data_free_q8_recipe_on_a_conv_bn_net() -> None:
    torch.manual_seed(0)
    net = randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        )
    )
    q = dfc.compress(net, "q8", progress=False, input_shape=(3, 32, 32))
    s = dfc.summary(q)
    assert s.counts() == {"int8": 3}
    assert all(isinstance(m, QuantLayer) and m.input_scale is not None for m in (q[0], q[3], q[8]))


def test_summary_of_a_float_model_says_not_selected() -> None:
    s = dfc.summary(same_pad_net())
    assert s.float_layers == dict.fromkeys(["0", "3", "6", "10"], "not selected")
    table = s.to_markdown().splitlines()
    assert (
        len(table) == 2 + 4 and "| 0 | SamePadConv2d | float | 0.0% | 432 | not selected |" in table
    )


def test_a_few_zero_weights_are_not_called_pruned() -> None:
    """Weights that underflowed to 0 in a 16-bit checkpoint are not a pruned layer."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    with torch.no_grad():
        net[0].weight.view(-1)[:1] = 0.0  # 1 of 216 weights
        net[1].weight.view(-1)[:100] = 0.0  # 100 of 576
    rows = {r.name: r for r in dfc.summary(net)}
    assert (rows["0"].action, rows["0"].reason) == ("float", "not selected")
    assert (rows["1"].action, rows["1"].reason) == ("pruned", None)


def test_rule_kept_layers_are_reported_as_such() -> None:
    q = dfc.quantize(same_pad_net(), [("head", "float"), ("all", "int8-weight")], progress=False)
    rows = {r.name: r for r in dfc.summary(q)}
    assert rows["10"].reason == "kept by a rule" and rows["0"].action == "int8"


def test_subclass_model_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    q = dfc.quantize(same_pad_net(), "int8", calibration=X, progress=False, pack=True)
    r = dfc.export_onnx(q, tmp_path / "q.onnx", X[:4])
    assert r.agreement == 1.0
    assert q[0].weight_packed is not None and q[0].weight_packed.dtype == torch.int8
    # Layers in a bare Sequential: nothing can rebuild SamePadConv2d, so save says so.
    with pytest.raises(DfcompressError, match=r"own forward of '.*SamePadConv2d'.*constructor"):
        dfc.save(q, tmp_path / "q.safetensors")
