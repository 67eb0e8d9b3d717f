"""The onnxruntime target rounds the operators between convolutions as ONNX Runtime does.

Sigmoid, products, sums and average pools of int8 codes get a uint8 output
quantizer in the eager model and the same Q/DQ pair in the file, so ONNX Runtime
runs them as integer kernels (QLinearSigmoid, QLinearMul, ...) and the file still
computes what the eager model computes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from _deploy_nets import efficientnet_net, inputs
from torch import Tensor, nn

import dfcompress as dfc
from dfcompress.deploy._onnx_elementwise import ElementwiseRounding
from dfcompress.errors import DfcompressError
from dfcompress.models.resnet import se_resnet

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _rounded(model: nn.Module) -> dict[str, list[str]]:
    return {n: m.kinds for n, m in model.named_modules() if isinstance(m, ElementwiseRounding)}


def _gate_net() -> nn.Module:
    """Conv, ReLU, a squeeze-excitation gate read through nn modules and functions, a sum."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.gate = nn.Sigmoid()

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            g = self.gate(self.expand(torch.relu(self.reduce(self.pool(y)))))
            return torch.relu(x + y * g)

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        Block(),
        Block(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 1),
    ).eval()


def test_sigmoids_products_sums_and_pools_run_as_integer_kernels(tmp_path: Path) -> None:
    net, x = efficientnet_net(), inputs(32, 32, 0)
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    kinds = [k for ks in _rounded(q).values() for k in ks]
    # 16 blocks: SiLU after the expanding (15) and depthwise (16) convs and in each SE (16),
    # stem and head SiLU (2); one SE gate per block; 9 residual sums; 16 SE pools + the head's
    assert kinds.count("Sigmoid") == 15 + 16 + 16 + 2 + 16
    assert kinds.count("Mul") == kinds.count("Sigmoid")
    assert kinds.count("Add") == 9 and kinds.count("GlobalAveragePool") == 17
    art = dfc.export(q, tmp_path / "q.onnx", x[:8])
    kernels = art.details["int8_kernels"]
    assert kernels.get("QLinearSigmoid") == kinds.count("Sigmoid")
    assert kernels.get("QLinearMul") == kinds.count("Mul")
    assert kernels.get("QLinearAdd") == 9 and kernels.get("QLinearGlobalAveragePool") == 17
    test = inputs(200, 32, 1)
    with torch.no_grad():
        eager = q(test)
    assert float((eager.argmax(1) == art.run(test).argmax(1)).float().mean()) >= 0.995


def test_a_gate_read_through_modules_is_rounded_to_uint8_codes() -> None:
    x = inputs(32, 16, 0)
    q = dfc.quantize(_gate_net(), "int8", calibration=x, progress=False, target="onnxruntime")
    # ReLU outputs are on their input's grid: the block's sum reads them as codes
    # each operator's quantizers are held by the module calling it
    assert _rounded(q) == {
        "2.pool.dfc_round": ["GlobalAveragePool"],
        "2.gate.dfc_round": ["Sigmoid"],
        "2.dfc_round": ["Mul", "Add"],
        "3.pool.dfc_round": ["GlobalAveragePool"],
        "3.gate.dfc_round": ["Sigmoid"],
        "3.dfc_round": ["Mul", "Add"],
        "4.dfc_round": ["GlobalAveragePool"],
    }
    seen: list[Tensor] = []
    q[2].gate.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        q(x[:4])
    fq = q[2].gate.dfc_round.quantizers[0]
    codes = seen[0] / fq.scale + fq.zero_point
    assert float((codes - codes.round()).abs().max()) < 1e-3  # on the uint8 grid
    assert 0 <= float(codes.min()) <= float(codes.max()) <= 255
    assert len(codes.round().unique()) > 8  # not one saturated value
    assert float(fq.scale) < 1 / 255  # the observed range, narrower than [0, 1]


def test_a_relu_of_codes_that_cannot_be_negative_leaves_the_file(tmp_path: Path) -> None:
    """The sum's range is its reader's (after the ReLU, from 0): the ReLU is a no-op,
    and the next block's sum reads the dequantized codes, as QLinearAdd needs."""
    x = inputs(32, 16, 0)
    q = dfc.quantize(_gate_net(), "int8", calibration=x, progress=False, target="onnxruntime")
    art = dfc.export(q, tmp_path / "q.onnx", x[:8])
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    # the last block's sum is read by its ReLU only (then by the head's pool, not a
    # layer): its range starts at 0 as well, and that ReLU leaves the file too
    assert ops.count("Relu") == 0
    last_sum = q[3].dfc_round.quantizers[-1]
    assert q[3].dfc_round.kinds[-1] == "Add" and int(last_sum.zero_point_int32()) == 0
    assert art.details["int8_kernels"].get("QLinearAdd") == 2
    with torch.no_grad():
        y = q(x)
    assert float((y - art.run(x)).abs().max()) <= 0.02 * float(y.abs().max())


class _SumUses(nn.Module):
    """A sum read by a ReLU and, with ``also``, by something else as well."""

    def __init__(self, also: str) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 1)
        self.also = also

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        s = self.a(x) + self.b(x)
        r = torch.relu(s)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(r, 1), 1)
        if self.also == "sum":  # the sum read again, negative part included
            pooled = pooled + torch.flatten(nn.functional.adaptive_avg_pool2d(s, 1), 1)
        out = self.head(pooled)
        return (out, s) if self.also == "output" else out


@pytest.mark.parametrize("also", ["", "sum", "output"])
def test_a_sum_read_by_relus_only_starts_its_range_at_zero(also: str) -> None:
    torch.manual_seed(0)
    x = inputs(32, 16, 0)
    net = _SumUses(also).eval()
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    fq = q.dfc_round.quantizers[q.dfc_round.kinds.index("Add")]
    lowest = float((fq.qmin - fq.zero_point_int32()) * fq.scale)
    with torch.no_grad():
        s = net.a(x) + net.b(x)
    assert float(s.min()) < -0.1  # the sum has a negative part to lose
    if also:  # its negative part is read: kept
        assert lowest < -0.1
    else:
        assert lowest == 0.0
        # what the ReLU keeps is rounded no coarser than before (same top, no negatives)
        assert float(fq.scale) * (fq.qmax - fq.qmin) <= float(s.max()) * 1.01 + 1e-6


def test_the_rounding_survives_a_copy_and_save_and_load(tmp_path: Path) -> None:
    x = inputs(32, 16, 0)
    torch.manual_seed(0)
    net = se_resnet((8, 16), num_classes=1).eval()
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    assert {k for ks in _rounded(q).values() for k in ks} == {
        "GlobalAveragePool",
        "Sigmoid",
        "Mul",
        "Add",
    }
    with torch.no_grad():
        want = q(x)
        assert torch.equal(copy.deepcopy(q)(x), want)
        back = dfc.load(dfc.save(q, tmp_path / "q.safetensors"))
        assert _rounded(back) == _rounded(q)
        assert torch.equal(back(x), want)
        # without its hooks the loaded model would compute the float operators
        plain = copy.deepcopy(back)
        plain._forward_pre_hooks.clear()
        assert not torch.equal(plain(x), want)
    art = dfc.export(back, tmp_path / "back.onnx", x[:8])
    assert art.target == "onnxruntime" and art.agreement is not None


def test_the_callers_model_is_not_touched() -> None:
    net, x = _gate_net(), inputs(16, 16, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    assert not _rounded(net) and not net._forward_pre_hooks
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_forward_calling_other_operators_than_calibrated_is_refused() -> None:
    class Switch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gated = True

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            return y * torch.sigmoid(y) if self.gated else y + y

    torch.manual_seed(0)
    q = dfc.quantize(Switch(), "int8", calibration=inputs(8, 16, 0), target="onnxruntime")
    assert _rounded(q) == {"dfc_round": ["Sigmoid", "Mul"]}
    q.gated = False
    with pytest.raises(DfcompressError, match=r"call 0 is a Add, calibrated as a Sigmoid"):
        q(inputs(2, 16, 1))


def test_operators_on_float_tensors_stay_float() -> None:
    """A sigmoid of the float input is no int8 tensor in the file either: left alone."""

    class Pre(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(torch.sigmoid(x) * x)

    torch.manual_seed(0)
    q = dfc.quantize(Pre(), "int8", calibration=inputs(8, 16, 0), target="onnxruntime")
    assert _rounded(q) == {}
