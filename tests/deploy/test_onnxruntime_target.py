"""quantize(target="onnxruntime"): the eager model computes what ONNX Runtime computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _deploy_nets import NETS, inputs, resnet_net, se_silu_net, wide_depthwise
from torch import nn

import dfcompress as dfc
from dfcompress.deploy._onnx_quant import WEIGHT_BITS, tie_requantization
from dfcompress.deploy._targets import target_of
from dfcompress.errors import DfcompressError
from dfcompress.quant import IntQuant, PerTensor, QuantLayer
from dfcompress.select import preset

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


def _decisions(y: torch.Tensor) -> torch.Tensor:
    return y[:, 0] > 0 if y.shape[1] == 1 else y.argmax(1)


@pytest.mark.parametrize("name", sorted(NETS))
def test_eager_and_onnx_runtime_agree(tmp_path: Path, name: str) -> None:
    build, size = NETS[name]
    net = build()
    calib, test = inputs(64, size, 0), inputs(200, size, 1)
    q = dfc.quantize(net, "int8", calibration=calib, progress=False, target="onnxruntime")
    assert q.dfc_target == "onnxruntime"
    art = dfc.export(q, tmp_path / "q.onnx", test[:16])  # the target's own check passes
    assert art.target == "onnxruntime" and art.details["kind"] == "int8"
    assert art.details["int8_kernels"].get("QLinearConv", 0) >= 1
    with torch.no_grad():
        eager = q(test)
    deployed = art.run(test)
    agree = float((_decisions(eager) == _decisions(deployed)).float().mean())
    assert agree >= 0.995
    # What is left: an input on the other side of a rounding boundary now and then.
    assert float((eager - deployed).abs().max()) <= 0.02 + 0.05 * float(eager.abs().max())


def test_the_file_has_no_division_and_weights_that_cannot_saturate(tmp_path: Path) -> None:
    net, x = se_silu_net(), inputs(32, 16, 0)
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    art = dfc.export(q, tmp_path / "q.onnx", x[:8])
    graph = onnx.load(str(art.path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Div" not in ops  # no activation equalization left in the graph
    assert {"Sigmoid", "Mul"} <= ops  # squeeze-excitation and SiLU, between Q/DQ pairs
    weights = [numpy_helper.to_array(t) for t in graph.initializer]
    codes = [w for w in weights if w.dtype == np.int8 and w.ndim >= 2]
    assert codes and all(w.min() >= -64 and w.max() <= 63 for w in codes)
    assert max(int(np.abs(w).max()) for w in codes) >= 60  # 7-bit, not fewer
    assert WEIGHT_BITS == 7


def test_every_quantized_conv_rounds_its_output_as_qlinearconv_does() -> None:
    x = inputs(16, 16, 0)
    q = dfc.quantize(se_silu_net(), "int8", calibration=x, progress=False, target="onnxruntime")
    layers = [m for m in q.modules() if isinstance(m, QuantLayer)]
    convs = [m for m in layers if m.layer_kind == "conv2d"]
    assert convs and all(m.output_scale is not None for m in convs)
    assert all(m.input_smoothing is None for m in layers)


def test_a_conv_read_directly_by_the_next_layer_rounds_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Conv2d(8, 8, 1),  # read directly: tied
        nn.ReLU6(),
        nn.Conv2d(8, 8, 1),  # through ReLU6: tied, the QuantizeLinear clamps as ReLU6 does
        nn.SiLU(),
        nn.Conv2d(8, 4, 1),  # through SiLU: its product is rounded to this conv's input codes
    )
    x = torch.randn(32, 3, 10, 10)
    q = dfc.quantize(net, "int8", calibration=x, progress=False, target="onnxruntime")
    assert torch.equal(q[0].output_scale, q[1].input_scale)
    assert torch.equal(q[1].output_scale, q[3].input_scale)
    assert not torch.equal(q[3].output_scale, q[5].input_scale)
    assert tie_requantization(q, x[:1]) == 2
    art = dfc.export(q, tmp_path / "q.onnx", x)
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert "Clip" not in ops  # ReLU6 became the clamp of the next QuantizeLinear
    # each conv input, the last two outputs and SiLU's sigmoid; the first two outputs and
    # SiLU's product are their readers' inputs
    assert ops.count("QuantizeLinear") == 7
    with torch.no_grad():
        y = q(x)
    assert float((y - art.run(x)).abs().max()) <= 0.02 * float(y.abs().max())


def test_export_to_another_target_is_refused(tmp_path: Path) -> None:
    x = inputs(8, 16, 0)
    q = dfc.quantize(se_silu_net(), "int8", calibration=x, progress=False, target="onnxruntime")
    with pytest.raises(DfcompressError, match="quantized for 'onnxruntime'"):
        dfc.export(q, tmp_path / "q.pt", x, target="torchscript")


@pytest.mark.parametrize("config", ["int4", "fp16", "int8-weight"])
def test_configs_without_an_int8_form_are_refused(config: str) -> None:
    with pytest.raises(DfcompressError, match=f"config='{config}' has no ONNX Runtime int8"):
        dfc.quantize(se_silu_net(), config, calibration=inputs(4, 16, 0), target="onnxruntime")


@pytest.mark.parametrize("name", ["se_silu", "efficientnet_b0", "bnext"])
def test_default_int8_exports_within_the_default_check(tmp_path: Path, name: str) -> None:
    build, size = NETS[name]
    net, calib = build(), inputs(64, size, 0)
    q = dfc.quantize(net, "int8", calibration=calib, progress=False)
    example = inputs(32, size, 1)
    art = dfc.export(q, tmp_path / "q.onnx", example, target="onnxruntime", calibration=calib)
    assert art.agreement is not None and art.agreement.passed
    assert art.agreement.max_abs_diff <= art.agreement.bound
    kernels = art.details["int8_kernels"]
    assert kernels["QLinearConv"] >= 1
    assert "QLinearSigmoid" not in kernels and "QLinearMul" not in kernels  # float, as in eager


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("inplace", True),
        ("pack", True),
        ("fold_bn", False),
        ("bn_reestimation", True),
        ("rounding", "adaptive"),
        ("cross_layer_equalization", True),
    ],
)
def test_options_a_target_cannot_honour_are_refused_by_name(option: str, value: object) -> None:
    net = resnet_net()
    x = inputs(4, 16, 0)
    with pytest.raises(DfcompressError, match=rf"{option}={value!r} cannot be used with target="):
        dfc.quantize(net, "int8", x, target="onnxruntime", progress=False, **{option: value})


def test_compress_with_a_target_leaves_the_callers_model_alone() -> None:
    net = resnet_net()
    x = inputs(8, 16, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small = dfc.compress(net, "q8", x, target="onnxruntime", progress=False)
    assert small is not net and target_of(small) == "onnxruntime"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_gptq_rounding_exports_the_codes_it_chose(tmp_path: Path) -> None:
    net = resnet_net()
    x = inputs(16, 16, 0)
    q = dfc.quantize(net, "int8", x, target="onnxruntime", rounding="gptq", progress=False)
    plain = dfc.quantize(net, "int8", x, target="onnxruntime", progress=False)
    changed = sum(
        int((a.int_weight() != b.int_weight()).sum())
        for a, b in zip(
            (m for m in q.modules() if isinstance(m, QuantLayer)),
            (m for m in plain.modules() if isinstance(m, QuantLayer)),
            strict=True,
        )
    )
    assert changed > 0
    art = dfc.export(q, tmp_path / "gptq.onnx", x[:4])
    assert art.agreement is not None and art.agreement.passed


def test_biases_sit_on_the_int32_grid_the_file_adds_them_on(tmp_path: Path) -> None:
    net = wide_depthwise()
    x = torch.randn(48, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    q = dfc.quantize(net, "int8", calibration=x[:32], target="onnxruntime", progress=False)
    conv = q[0]
    step = conv.input_quant.scale * conv.weight_quant.scale.reshape(-1)
    codes = conv.bias.detach().double() / step.double()
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    # the caller's float bias is untouched
    assert not torch.equal(conv.bias.detach(), net[0].bias.detach())
    art = dfc.export(q, tmp_path / "m.onnx", x[:2])
    with torch.no_grad():
        eager = q(x[32:])
    # ONNX Runtime adds the same int32 bias: the files' codes are the eager model's
    # (a float bias put one output in 200 a code away on this net)
    assert float(((art.run(x[32:]) - eager).abs() > 1e-5).float().mean()) < 5e-4


def test_named_int8_ranges_ignore_a_rare_outlier() -> None:
    # One calibration pixel 50x beyond the rest: the named config's percentile ranges
    # keep the step the other 99.99 % need; min/max ranges widen it for that pixel.
    net = resnet_net()
    calib = inputs(16, 32, 0)
    calib[0, 0, 0, 0] = 50 * float(calib.abs().max())
    named = dfc.quantize(net, "int8", calibration=calib, progress=False, target="onnxruntime")
    cfg = IntQuant(8, activations=IntQuant(8, PerTensor(), False, "minmax"))
    plain = dfc.quantize(net, cfg, calibration=calib, progress=False, target="onnxruntime")
    first = next(m for m in named.modules() if isinstance(m, QuantLayer))
    first_plain = next(m for m in plain.modules() if isinstance(m, QuantLayer))
    assert first.input_quant is not None and first_plain.input_quant is not None
    assert float(first.input_quant.scale) < 0.2 * float(first_plain.input_quant.scale)


def test_binary_convs_compute_what_their_int8_kernels_compute(tmp_path: Path) -> None:
    """BNext's binary convs run as QLinearConv: BatchNorm folded, int32 bias, uint8 output.

    Kept float in the eager model, they rounded nothing, and the trained BNext's
    eager model and file disagreed on 7 % of their decisions.
    """
    from dfcompress.models import BinaryConv2d
    from dfcompress.models._binary import Int8BinaryConv2d

    build, size = NETS["bnext"]
    net = build()
    n_binary = sum(isinstance(m, BinaryConv2d) for m in net.modules())
    calib, test = inputs(64, size, 0), inputs(200, size, 1)
    # select="all": the stem int8 too, so that every tensor the file rounds is exact
    q = dfc.quantize(
        net, "int8", calibration=calib, progress=False, target="onnxruntime", select="all"
    )
    assert sum(isinstance(m, Int8BinaryConv2d) for m in q.modules()) == n_binary > 0
    assert not any(isinstance(m, BinaryConv2d) for m in q.modules())
    art = dfc.export(q, tmp_path / "q.onnx", test[:16])
    assert art.details["int8_kernels"]["QLinearConv"] >= n_binary
    with torch.no_grad():
        eager = q(test)
    # the same codes everywhere: what is left is float32 rounding in the float ops
    assert float((eager - art.run(test)).abs().max()) <= 1e-5
    # and the model saves and loads as it is
    dfc.save(q, tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(dfc.load(tmp_path / "q.safetensors")(test), eager)


def test_binary_network_keeps_its_stem_float_and_says_so(tmp_path: Path) -> None:
    """With binary convs, the stem stays float on this target unless ``select`` names it.

    Its uint8 output starts the stream the sign activations read (the trained BNext's
    file lost 0.0088 AUC with it, 0.0022 without); the summary gives the reason, and
    the file computes what the eager model does either way.
    """
    build, size = NETS["bnext"]
    net = build()
    stem = next(iter(preset("stem").resolve(net)))
    calib, test = inputs(64, size, 0), inputs(64, size, 1)
    q = dfc.quantize(net, "int8", calibration=calib, progress=False, target="onnxruntime")
    rows = {r.name: r for r in dfc.summary(q)}
    assert (rows[stem].action, rows[stem].reason) == ("float", "kept by a rule")
    assert sum(r.action.startswith("int") for r in rows.values()) == len(rows) - 1
    picked = dfc.quantize(
        net, "int8", calibration=calib, progress=False, target="onnxruntime", select="all"
    )
    assert {r.name: r for r in dfc.summary(picked)}[stem].action.startswith("int")
    # all int8: the same codes everywhere; the float stem's last-bit differences
    # (PyTorch's and ONNX Runtime's convolutions) can move a value across a code
    # boundary of the next layer, never a decision
    for m, name, tol in ((picked, "all.onnx", 1e-5), (q, "kept.onnx", 1e-2)):
        art = dfc.export(m, tmp_path / name, test[:16])
        with torch.no_grad():
            eager = m(test)
        deployed = art.run(test)
        assert float((eager - deployed).abs().max()) <= tol
        assert torch.equal(_decisions(eager), _decisions(deployed))
    # a network without binary convs quantizes its stem as before
    build, size = NETS["resnet"]
    plain = dfc.quantize(
        build(), "int8", calibration=inputs(64, size, 0), progress=False, target="onnxruntime"
    )
    assert all(r.action.startswith("int") for r in dfc.summary(plain))
