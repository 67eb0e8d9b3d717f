"""The xnnpack target's export, load, selection, summary and refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _deploy_nets import assert_int8_file_is_the_eager_model, wide_depthwise
from _xnnpack_nets import resnet_like
from torch import nn

pytest.importorskip("executorch")

import dfcompress
from dfcompress.deploy import Artifact, xnnpack
from dfcompress.errors import DfcompressError
from dfcompress.quant import Float, IntQuant, PerTensor

G = torch.Generator().manual_seed(0)
CALIB = torch.randn(16, 3, 32, 32, generator=G)
TEST = torch.randn(20, 3, 32, 32, generator=G)


@pytest.fixture(scope="module")
def quantized() -> nn.Module:
    return dfcompress.quantize(
        resnet_like(), "int8", calibration=CALIB, target="xnnpack", progress=False
    )


@pytest.fixture(scope="module")
def int8_artifact(quantized: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return dfcompress.export(quantized, tmp_path_factory.mktemp("x") / "q.pte", TEST)


@pytest.fixture(scope="module")
def int8_file(int8_artifact: Artifact) -> Path:
    return int8_artifact.path


def test_int8_file_computes_what_the_eager_model_computes(
    quantized: nn.Module, int8_artifact: Artifact
) -> None:
    # The ResNet-like case of test_xnnpack_models' model list, on this module's export.
    art = int8_artifact
    assert art.target == "xnnpack" and art.details["quantized"]
    assert art.details["delegated_ops"] > 0
    assert_int8_file_is_the_eager_model(resnet_like(), quantized, art, TEST)
    assert art.agreement is not None
    assert art.agreement.max_abs_diff <= art.agreement.bound


def test_the_check_compares_the_file_with_the_eager_model_itself(tmp_path: Path) -> None:
    """The reference is the model's own forward (XNNPACK's integer arithmetic), not its graph."""
    q = dfcompress.quantize(
        resnet_like(), "int8", calibration=CALIB, target="xnnpack", progress=False
    )
    art = dfcompress.export(q, tmp_path / "q.pte", TEST)
    with torch.no_grad():
        eager = q(TEST)
    assert art.agreement is not None
    assert art.agreement.max_abs_diff == float((art.run(TEST) - eager).abs().max())
    # an eager model that no longer computes what its graph computes fails the check
    inner = q.__dict__["emulated"]
    q.__dict__["emulated"] = lambda x: inner(x) + 10.0
    with pytest.raises(DfcompressError, match="does not reproduce the eager model"):
        dfcompress.export(q, tmp_path / "moved.pte", TEST)


def test_float_model_exports_and_matches(tmp_path: Path) -> None:
    net = resnet_like()
    art = dfcompress.export(net, tmp_path / "f.pte", TEST)
    assert art.target == "xnnpack" and not art.details["quantized"]
    assert art.agreement is not None and art.agreement.max_abs_diff < 1e-4
    assert art.details["delegates"] >= 1
    with torch.no_grad():
        torch.testing.assert_close(art.run(TEST[:3]), net(TEST[:3]), atol=1e-4, rtol=1e-3)


def test_loaded_file_runs_any_batch_size(quantized: nn.Module, int8_file: Path) -> None:
    art = xnnpack.load_artifact(int8_file)
    assert art.agreement is None and art.size_bytes == int8_file.stat().st_size
    big = torch.cat([TEST, TEST])  # larger than the file's planned batch: run in chunks
    assert big.shape[0] > art.details["max_batch"]
    with torch.no_grad():
        ref = quantized(big)
    for batch in (big[:1], big[:7], big):
        got = art.run(batch)
        assert got.shape == (batch.shape[0], 2)
        torch.testing.assert_close(got, ref[: batch.shape[0]], atol=1e-3, rtol=0.05)


def test_eager_model_any_batch_and_summary(quantized: nn.Module) -> None:
    assert getattr(quantized, "dfc_target", None) == "xnnpack"
    assert quantized.details["activation_observer"] == "percentile"  # type: ignore[index]
    assert quantized(TEST[:1]).shape == (1, 2) and quantized(TEST).shape == (20, 2)
    rows = dfcompress.summary(quantized)
    assert rows.counts() == {"int8": 6}
    assert "int8" in rows.to_markdown()


def test_save_refuses_with_the_export_hint(quantized: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=r"dfcompress\.export"):
        dfcompress.save(quantized, tmp_path / "q.safetensors")


def test_selection_leaves_layers_float_in_eager_and_file(tmp_path: Path) -> None:
    net = resnet_like()
    rules = [("3.conv1", Float()), ("all", "int8")]
    q = dfcompress.quantize(net, rules, calibration=CALIB, target="xnnpack", progress=False)
    s = dfcompress.summary(q)
    assert {r.name: r.action for r in s}["3.conv1"] == "float"
    assert s.counts() == {"int8": 5, "float": 1}
    graph = q.graph.graph  # type: ignore[union-attr]
    float_convs = [
        n
        for n in graph.nodes
        if n.op == "call_function"
        and "conv2d" in str(n.target)
        and "dequantize_per_channel" not in str(n.args[1])
    ]
    assert len(float_convs) == 1
    art = dfcompress.export(q, tmp_path / "sel.pte", TEST)
    assert art.agreement is not None and art.agreement.passed


def test_bits_xnnpack_cannot_run_are_refused() -> None:
    with pytest.raises(DfcompressError, match=r"static int8 only.*int4"):
        dfcompress.quantize(resnet_like(), "int4", calibration=CALIB, target="xnnpack")
    with pytest.raises(DfcompressError, match="weight-only"):
        dfcompress.quantize(resnet_like(), "int8-weight", calibration=CALIB, target="xnnpack")
    with pytest.raises(DfcompressError, match=r"static int8 only.*FP16"):
        dfcompress.quantize(resnet_like(), "fp16", calibration=CALIB, target="xnnpack")


def test_plain_int8_model_is_refused_with_the_target_hint(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = dfcompress.quantize(resnet_like(), "int8", calibration=CALIB, progress=False)
    with pytest.raises(DfcompressError, match="target='xnnpack'"):
        dfcompress.export(q, tmp_path / "q.pte", TEST)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_batch": 0}, "max_batch=0"),
        ({"atol": -1.0}, "atol=-1.0"),
        ({"min_agreement": 1.5}, "min_agreement=1.5"),
        ({"check": "yes"}, "check="),
    ],
)
def test_bad_export_options(options: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=match):
        dfcompress.export(nn.Linear(4, 2), tmp_path / "m.pte", torch.randn(2, 4), **options)


def test_bad_quantize_options() -> None:
    cfg = IntQuant(8, activations=IntQuant(8, PerTensor(), False, "dynamic"))
    with pytest.raises(DfcompressError, match="dynamic"):
        dfcompress.quantize(resnet_like(), cfg, calibration=CALIB, target="xnnpack")
    with pytest.raises(DfcompressError, match="finetune="):
        dfcompress.quantize(resnet_like(), calibration=CALIB, target="xnnpack", finetune=3)
    with pytest.raises(DfcompressError, match="not a file"):
        xnnpack.load_artifact("/nonexistent/m.pte")


def test_bias_correction_lowers_the_error_it_targets() -> None:
    # With MSE activation ranges the rounded weights' mean error is what remains;
    # with the percentile default clipping dominates on this random net.
    net = resnet_like()
    cfg = IntQuant(8, activations=IntQuant(8, PerTensor(), False, "mse"))
    kw = {"calibration": CALIB, "target": "xnnpack", "progress": False}
    plain = dfcompress.quantize(net, cfg, bias_correction=False, **kw)
    fixed = dfcompress.quantize(net, cfg, bias_correction=True, **kw)
    assert fixed.details["bias_corrected_layers"] == 6  # type: ignore[index]
    with torch.no_grad():
        ref = net(CALIB)
        err_plain = (plain(CALIB) - ref).mean(0).abs().sum()
        err_fixed = (fixed(CALIB) - ref).mean(0).abs().sum()
    assert err_fixed < err_plain


def test_qat_by_distillation_trains_the_graph_and_still_deploys(
    quantized: nn.Module, tmp_path: Path
) -> None:
    net = resnet_like()
    ft = dfcompress.distill_finetune(net, [CALIB], epochs=1, lr=1e-3, progress=False)
    ptq = quantized  # the same float net and calibration, without the finetune
    kw = {"calibration": CALIB, "target": "xnnpack", "progress": False}
    qat = dfcompress.quantize(net, "int8", finetune=ft, **kw)
    assert qat.details["qat"] is True  # type: ignore[index]
    with torch.no_grad():
        assert not torch.equal(qat(TEST), ptq(TEST))  # the weights were trained
    art = dfcompress.export(qat, tmp_path / "qat.pte", TEST)
    assert art.agreement is not None and art.agreement.passed


def _activation_scales(q: nn.Module) -> list[float]:
    ops = torch.ops.quantized_decomposed
    return [
        float(n.args[1])
        for n in q.graph.graph.nodes  # type: ignore[union-attr]
        if n.target in (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)
    ]


def test_qat_calibrates_the_ranges_ptq_calibrates(quantized: nn.Module) -> None:
    # With nothing trained, QAT's model is PTQ's: each activation range is observed on
    # the float values, not on values already rounded to the ranges before it.
    trained_ops: list[str] = []

    def finetune(model: nn.Module, step: int) -> None:
        trained_ops.extend(str(n.target) for n in model.graph.nodes)  # type: ignore[union-attr]

    untrained = dfcompress.quantize(
        resnet_like(),
        "int8",
        calibration=CALIB,
        target="xnnpack",
        progress=False,
        finetune=finetune,
    )
    # BatchNorm is folded into the convolutions before QAT, as the runtime runs them:
    # the graph trains the folded weights, with no batch statistics in play
    assert any("conv2d" in o for o in trained_ops)
    assert not any("batch_norm" in o for o in trained_ops)
    qat, ptq = _activation_scales(untrained), _activation_scales(quantized)
    assert len(qat) == len(ptq) > 10
    torch.testing.assert_close(torch.tensor(qat), torch.tensor(ptq), rtol=1e-5, atol=0.0)


def test_gptq_rounding_chooses_the_codes_the_file_holds(tmp_path: Path) -> None:
    # MSE activation ranges, as above: what remains is mostly the weights' rounding.
    net = resnet_like()
    cfg = IntQuant(8, activations=IntQuant(8, PerTensor(), False, "mse"))
    kw = {"calibration": CALIB, "target": "xnnpack", "progress": False, "bias_correction": False}
    plain = dfcompress.quantize(net, cfg, **kw)
    gptq = dfcompress.quantize(net, cfg, rounding="gptq", **kw)
    assert gptq.details["gptq_rounded_layers"] >= 4  # type: ignore[index]
    with torch.no_grad():
        ref = net(CALIB)
        assert (gptq(CALIB) - ref).pow(2).mean() < (plain(CALIB) - ref).pow(2).mean()
    art = dfcompress.export(gptq, tmp_path / "gptq.pte", TEST)
    assert art.agreement is not None and art.agreement.passed
    with torch.no_grad():
        torch.testing.assert_close(art.run(TEST), gptq(TEST), rtol=0, atol=0.05)


def test_adaptive_rounding_is_refused_and_gptq_needs_data() -> None:
    with pytest.raises(DfcompressError, match="rounding='adaptive' cannot be used"):
        dfcompress.quantize(resnet_like(), "int8", CALIB, target="xnnpack", rounding="adaptive")
    with pytest.raises(DfcompressError, match="rounding='gptq' chooses"):
        dfcompress.quantize(resnet_like(), "int8", target="xnnpack", rounding="gptq")


def test_biases_sit_on_the_int32_grid_and_the_file_matches(tmp_path: Path) -> None:
    # a depthwise conv with the large weights and biases of a folded pretrained one:
    # a float bias in the graph put one output in 200 a code away from the file
    net = wide_depthwise()
    x = torch.randn(48, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    kw = {"calibration": x[:32], "target": "xnnpack", "progress": False}
    q = dfcompress.quantize(net, "int8", bias_correction=False, **kw)
    art = dfcompress.export(q, tmp_path / "m.pte", x[:2])
    with torch.no_grad():
        differ = (art.run(x[32:]) - q(x[32:])).abs() > 1e-6
    # the same bias: only float rounding ties remain (a code or so in 10,000)
    assert float(differ.float().mean()) < 5e-4


def test_qat_keeps_the_batchnorm_statistics_the_ranges_were_calibrated_with() -> None:
    # A BatchNorm after a ReLU folds into no convolution and stays in the QAT graph.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3), nn.Flatten()
    ).eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(0.2, 0.6)
        net[2].running_var.uniform_(0.5, 2.0)

    def finetune(model: nn.Module, step: int) -> None:
        model.train()  # what a training loop does; the batch statistics must not be used
        with torch.no_grad():
            model(CALIB * 4 + 2)
        model.eval()

    kw = {"calibration": CALIB, "target": "xnnpack", "progress": False}
    ptq = dfcompress.quantize(net, "int8", **kw)
    qat = dfcompress.quantize(net, "int8", finetune=finetune, **kw)
    with torch.no_grad():
        torch.testing.assert_close(qat(TEST), ptq(TEST))


class _PooledSiLU(nn.Module):
    """SiLU features, a squeeze-and-excitation gate and a global pool of the gated map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        z = y * torch.sigmoid(self.se(self.pool(y)))
        return self.fc(torch.flatten(self.pool(z), 1))


@pytest.mark.parametrize("qat", [False, True])
def test_a_range_shared_with_a_pool_covers_the_pooled_values(qat: bool) -> None:
    # The pool's int8 output shares its input's range; the range must still hold the
    # SiLU output it pools (at the 99.99th percentile), not a blend of those values
    # and the narrower averages: that clipped half of this net's SiLU outputs (the
    # negative ones among them) and 12 % of a pruned EfficientNet-B0's SE inputs.
    torch.manual_seed(0)
    net = _PooledSiLU().eval()
    with torch.no_grad():
        net.conv.weight.mul_(3.0)
    finetune = (lambda model, step: None) if qat else None
    q = dfcompress.quantize(
        net, "int8", calibration=CALIB, target="xnnpack", progress=False, finetune=finetune
    )
    ops = torch.ops.quantized_decomposed
    # the SiLU runs as x * sigmoid(x): its output is the first product's (the second
    # is the gate's)
    products = [
        n
        for n in q.graph.graph.nodes  # type: ignore[union-attr]
        if n.target == ops.quantize_per_tensor.default
        and n.args[0].target == torch.ops.aten.mul.Tensor
    ]
    assert len(products) == 2
    scale, zero_point, qmin, qmax = (float(a) for a in products[0].args[1:5])
    with torch.no_grad():
        y = net.act(net.conv(CALIB))
    codes = torch.round(y / scale) + zero_point
    clipped = float(((codes < qmin) | (codes > qmax)).float().mean())
    assert clipped <= 1e-3


class _AddMul(nn.Module):
    """A residual addition and a SiLU-like product, both int8 in XNNPACK."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = y + self.b(y)
        return z * torch.sigmoid(z)


def test_eager_additions_and_products_round_as_xnnpack_does(tmp_path: Path) -> None:
    # XNNPACK adds int8 tensors with 21-bit integer multipliers and a shift, and
    # requantizes products and convolutions in float32 from the integer sums; the
    # graph's float arithmetic put 21 of these million outputs one code away.
    torch.manual_seed(0)
    net = _AddMul().eval()
    g = torch.Generator().manual_seed(1)
    calib, test = torch.randn(16, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)
    q = dfcompress.quantize(net, "int8", calibration=calib, target="xnnpack", progress=False)
    assert q.details["emulated_ops"] >= 4  # type: ignore[index]
    art = dfcompress.export(q, tmp_path / "addmul.pte", test[:8], max_batch=64)
    with torch.no_grad():
        eager = q(test)
    assert torch.equal(eager, art.run(test))
