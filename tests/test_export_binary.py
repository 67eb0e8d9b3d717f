"""Binary convolutions exported as int8 convolutions; int8 kept between convs (chain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfcompress.deploy import export_onnx
from dfcompress.errors import DfcompressError
from dfcompress.models import BinaryActivation, BinaryConv2d, BNext, pack_binary
from dfcompress.models._binary import int8_codes
from dfcompress.quant import quantize
from dfcompress.quant.config import IntQuant, PerChannel, PerTensor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from dfcompress.deploy._onnx_binary import _binary_codes, sign_codes  # noqa: E402
from dfcompress.deploy._onnx_qdq import _Graph  # noqa: E402
from dfcompress.deploy._onnx_runtime import run_session  # noqa: E402


def small_bnext(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = BNext((8, 16, 32), num_classes=1)
    for m in net.modules():  # latent weights and biases away from zero, like a trained net
        if isinstance(m, BinaryActivation):
            m.bias.data.uniform_(-0.5, 0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def n_binary(net: nn.Module) -> int:
    return sum(isinstance(m, BinaryConv2d) for m in net.modules())


def int8_initializers(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    return [a for a in arrays if a.dtype == np.int8 and a.ndim == 4]


def test_exact_binary_export_reproduces_eager_with_one_byte_weights(tmp_path: Path) -> None:
    net = small_bnext()
    x = torch.randn(8, 3, 32, 32)
    f = export_onnx(net, tmp_path / "f.onnx", x)
    b = export_onnx(
        net,
        tmp_path / "b.onnx",
        x,
        binary="int8",
        quantize_conv_outputs=False,
        sparse_weights="off",
    )
    assert b.kind == "int8" and b.agreement == 1.0 and b.max_abs_diff < 1e-4
    codes = int8_initializers(b.path)
    assert len(codes) == n_binary(net)
    assert all(set(np.unique(c).tolist()) <= {-1, 0, 1} for c in codes)
    binary_params = sum(m.weight_numel for m in net.modules() if isinstance(m, BinaryConv2d))
    # 3 bytes saved per binary weight (4-byte floats become 1-byte codes)
    assert f.file_bytes - b.file_bytes > 2.5 * binary_params
    # Stored sparse, the +-1 codes take less still (a bit mask and one byte per +1)
    s = export_onnx(net, tmp_path / "s.onnx", x, binary="int8", quantize_conv_outputs=False)
    assert s.agreement == 1.0 and s.sparse_tensors >= 1 and s.file_bytes < b.file_bytes


def test_binary_convs_run_as_qlinearconv(tmp_path: Path) -> None:
    net = small_bnext()
    x = torch.randn(16, 3, 32, 32)
    r = export_onnx(net, tmp_path / "b.onnx", x, binary="int8", min_agreement=0.8)
    assert r.int8_kernels.get("QLinearConv", 0) == n_binary(net)


def test_packed_bnext_exports_the_same_codes(tmp_path: Path) -> None:
    net = small_bnext(1)
    x = torch.randn(4, 3, 32, 32)
    kw = {"binary": "int8", "quantize_conv_outputs": False}
    a = export_onnx(net, tmp_path / "a.onnx", x, **kw)  # type: ignore[arg-type]
    b = export_onnx(pack_binary(net), tmp_path / "b.onnx", x, **kw)  # type: ignore[arg-type]
    assert b.max_abs_diff < 1e-4
    for ca, cb in zip(int8_initializers(a.path), int8_initializers(b.path), strict=True):
        np.testing.assert_array_equal(ca, cb)


def test_binary_auto_follows_the_rest_of_the_model(tmp_path: Path) -> None:
    net = small_bnext()
    x = torch.randn(8, 3, 32, 32)
    assert export_onnx(net, tmp_path / "f.onnx", x).kind == "float"
    q = quantize(net, "int8", calibration=x, progress=False)
    n_quant = sum(type(m).__name__ == "QuantConv2d" for m in q.modules())
    kw = {"min_agreement": 0.0, "atol": 1e3}
    auto = export_onnx(q, tmp_path / "auto.onnx", x, **kw)  # type: ignore[arg-type]
    flt = export_onnx(q, tmp_path / "flt.onnx", x, binary="float", **kw)  # type: ignore[arg-type]
    assert auto.int8_kernels["QLinearConv"] == n_quant + n_binary(net)
    assert flt.int8_kernels["QLinearConv"] == n_quant
    assert auto.file_bytes < flt.file_bytes


def test_unknown_binary_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match="binary='int4' is unknown"):
        export_onnx(small_bnext(), tmp_path / "x.onnx", torch.randn(1, 3, 32, 32), binary="int4")  # type: ignore[arg-type]


def test_export_leaves_the_model_in_float_mode(tmp_path: Path) -> None:
    net = small_bnext()
    export_onnx(net, tmp_path / "b.onnx", torch.randn(2, 3, 32, 32), binary="int8", check=False)
    assert not any(getattr(m, "export_codes", False) for m in net.modules())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-0.5, 0.5))
def test_code_mode_matches_float_forward(seed: int, shift: float) -> None:
    torch.manual_seed(seed)
    layers = nn.Sequential(BinaryActivation(4), BinaryConv2d(4, 3, 3, stride=2)).eval()
    layers[0].bias.data.uniform_(-1, 1)
    x = torch.randn(2, 4, 7, 7) + shift
    with torch.no_grad():
        ref = layers(x)
        int8_codes(layers)
        got = layers(x)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_no_grad_forward_equals_training_forward() -> None:
    torch.manual_seed(0)
    act = BinaryActivation(3)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        fast = act(x)
    assert torch.equal(fast, act(x))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0009765625, 1024.0, width=32), min_size=1, max_size=6),
    st.integers(0, 2**31 - 1),
)
def test_binary_weight_codes_are_exact(alphas: list[float], seed: int) -> None:
    signs = np.where(np.random.default_rng(seed).random((len(alphas), 3, 2, 2)) < 0.5, -1, 1)
    w = (signs * np.asarray(alphas, np.float32).reshape(-1, 1, 1, 1)).astype(np.float32)
    found = _binary_codes(w)
    assert found is not None
    codes, scale = found
    np.testing.assert_array_equal(codes.astype(np.float32) * scale.reshape(-1, 1, 1, 1), w)


def test_general_weights_are_not_taken_for_binary() -> None:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert _binary_codes(w) is None


def test_sign_codes_select_the_quantized_constants(tmp_path: Path) -> None:
    h = onnx.helper
    tp = onnx.TensorProto
    nodes = [
        h.make_node("GreaterOrEqual", ["x", "zero"], ["c"]),
        h.make_node("Where", ["c", "one", "minus"], ["s"]),
        h.make_node("QuantizeLinear", ["s", "sc", "zp"], ["q"]),
        h.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "minus"),
        numpy_helper.from_array(np.array(1.0, np.float32), "sc"),
        numpy_helper.from_array(np.array(1, np.uint8), "zp"),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", tp.FLOAT, [None, 5])],
        [h.make_tensor_value_info("y", tp.FLOAT, [None, 5])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, -1e-30]], np.float32)
    before = run_session(model.SerializeToString(), [x])[0]
    assert sign_codes(_Graph(model)) == 1
    assert "QuantizeLinear" not in {n.op_type for n in model.graph.node}
    after = run_session(model.SerializeToString(), [x])[0]
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after, [[-1, 1, 1, 1, -1]])


class SiluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.stem(x))
        y = y + nn.functional.silu(self.conv(y))
        return self.head(y).mean(dim=(2, 3))


def test_elementwise_ops_run_as_integer_kernels(tmp_path: Path) -> None:
    x = torch.randn(16, 3, 12, 12)
    q = quantize(SiluNet().eval(), "int8", calibration=x, progress=False)
    on = export_onnx(q, tmp_path / "on.onnx", x, min_agreement=0.8)
    off = export_onnx(q, tmp_path / "off.onnx", x, quantize_elementwise=False)
    for op in ("QLinearSigmoid", "QLinearMul", "QLinearAdd"):
        assert on.int8_kernels.get(op, 0) >= 1
    assert "QLinearSigmoid" not in off.int8_kernels
    assert on.int8_kernels["QLinearConv"] == off.int8_kernels["QLinearConv"] == 3


def test_no_tensor_is_rounded_twice_on_its_way_into_a_conv(tmp_path: Path) -> None:
    x = torch.randn(16, 3, 12, 12)
    # without activation equalization, so that inputs are quantized right where they are made
    cfg = IntQuant(8, PerChannel(0), True, "minmax", IntQuant(8, PerTensor(), False, "minmax"))
    q = quantize(SiluNet().eval(), cfg, calibration=x, progress=False)
    r = export_onnx(q, tmp_path / "q.onnx", x, min_agreement=0.8)
    graph = onnx.load(str(r.path)).graph
    prod = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            src = prod.get(n.input[0])
            assert src is None or src.op_type != "DequantizeLinear", n.name
