"""BNext: published sizes, training step, selectors, 1-bit packing, TorchScript/ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from dfcompress._rebuild import get_constructor, kind_of, rebuild
from dfcompress.errors import DfcompressError
from dfcompress.models import (
    STAGE_CHANNELS,
    BinaryActivation,
    BinaryConv2d,
    BNext,
    BNextSE,
    bnext,
    deployed_size_bytes,
    pack_binary,
)
from dfcompress.select import select

# Published BNext figures (1000 classes): parameters in millions, 1-bit size in MiB.
PUBLISHED = {
    "tiny": (30.86, 13.3),
    "small": (68.60, 26.7),
    "middle": (134.50, 46.5),
    "large": (326.55, 106.2),
}


@pytest.fixture(scope="module")
def tiny() -> BNext:
    torch.manual_seed(0)
    return bnext("tiny").eval()


def _meta(variant: str) -> nn.Module:
    with torch.device("meta"):
        return bnext(variant, num_classes=1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_parameter_count_matches_the_paper(variant: str) -> None:
    params = sum(p.numel() for p in _meta(variant).parameters()) / 1e6
    expected = PUBLISHED[variant][0]
    assert abs(params - expected) / expected < 0.005, (variant, params)


@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_deployed_size_matches_the_paper(variant: str) -> None:
    mib = deployed_size_bytes(_meta(variant)) / 2**20
    assert round(mib, 1) == PUBLISHED[variant][1], (variant, mib)


def test_deployed_size_counts_binary_weights_at_one_bit() -> None:
    net = BNext((8, 16))
    binary = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    n_binary = sum(m.in_channels * m.out_channels * m.kernel_size**2 for m in binary)
    n_all = sum(p.numel() for p in net.parameters())
    bits_bytes = sum((m.weight_numel + 7) // 8 for m in binary)
    assert deployed_size_bytes(net) == bits_bytes + 4 * (n_all - n_binary)
    unfolded = deployed_size_bytes(net, folded=False)
    assert unfolded > deployed_size_bytes(net)  # scales and running statistics added
    assert deployed_size_bytes(pack_binary(net), folded=False) == unfolded


def test_stage_channels_are_the_published_ones() -> None:
    assert STAGE_CHANNELS["tiny"] == (32, 64, 128, 128, 256, 256, *[512] * 6, 1024, 1024)
    assert STAGE_CHANNELS["large"][-4:] == (2048,) * 4
    assert len(STAGE_CHANNELS["large"]) == 2 + 4 + 4 + 16 + 4


@pytest.mark.parametrize(
    "variant",
    [
        "tiny",
        pytest.param("small", marks=pytest.mark.slow),
        pytest.param("middle", marks=pytest.mark.slow),
        pytest.param("large", marks=pytest.mark.slow),
    ],
)
def test_forward_backward_every_variant(variant: str) -> None:
    torch.manual_seed(0)
    net = bnext(variant)  # type: ignore[arg-type]
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = {
        "stem": net.stem_conv.weight.grad,
        "binary": net.blocks[0].spatial.conv.weight.grad,
        "act_bias": net.blocks[0].spatial.activation.bias.grad,
        "se": net.blocks[-1].pointwise[0].se.reduce.weight.grad,
        "head": net.fc.weight.grad,
    }
    for name, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_selectors_find_stem_se_and_head(tiny: BNext) -> None:
    assert list(select(tiny, "stem")) == ["stem_conv"]
    assert list(select(tiny, "head")) == ["fc"]
    se = select(tiny, "se")
    blocks = [m for m in tiny.modules() if isinstance(m, BNextSE)]
    expected = {id(c) for b in blocks for c in (b.reduce, b.expand)}
    assert {id(m) for m in se.values()} == expected
    assert all(type(m) is nn.Conv2d for m in se.values())
    # binary convolutions are invisible to float-conv rules
    assert not issubclass(BinaryConv2d, nn.Conv2d)
    assert not any(isinstance(m, BinaryConv2d) for m in select(tiny, "conv").values())
    assert set(select(tiny, "conv")) == {"stem_conv", *se}


def test_factory_records_its_constructor() -> None:
    with torch.device("meta"):
        net = bnext("small", num_classes=2, in_chans=4)
    ctor = get_constructor(net)
    assert ctor == {
        "factory": "dfcompress.models.bnext:bnext",
        "kwargs": {"variant": "small", "num_classes": 2, "in_chans": 4},
    }
    assert net.stem_conv.in_channels == 4 and net.fc.out_features == 2


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(DfcompressError, match=r"'huge'.*tiny, small, middle, large"):
        bnext("huge")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match=r"\[1, 4, 32, 32\]"):
        BNext((8, 16))(torch.randn(1, 4, 32, 32))
    with pytest.raises(DfcompressError, match="16 -> 48"):
        BNext((8, 16, 48))


@settings(max_examples=30)
@given(
    st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=2, max_size=2),
    st.floats(-2, 2, allow_nan=False, width=32),
)
def test_binary_activation_forward_sign_backward_clipped(values: list[float], bias: float) -> None:
    act = BinaryActivation(2)
    with torch.no_grad():
        act.bias.fill_(bias)
    x = torch.tensor(values).reshape(1, 2, 1, 1).requires_grad_()
    y = act(x)
    shifted = x.detach() + act.bias.detach()
    assert torch.equal(y.detach(), torch.where(shifted >= 0, 1.0, -1.0))
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, (shifted.abs() <= 1.5).float())


def test_binary_conv_uses_scaled_sign_weights() -> None:
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 3, stride=2)
    x = torch.randn(2, 3, 9, 9)
    w = conv.weight.detach()
    alpha = w.abs().flatten(1).mean(1).reshape(-1, 1, 1, 1)
    expected = F.conv2d(x, alpha * torch.where(w >= 0, 1.0, -1.0), stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_pack_gives_identical_outputs_and_numpy_bit_order(tiny: BNext) -> None:
    x = torch.randn(1, 3, 32, 32)
    packed = pack_binary(tiny)
    with torch.no_grad():
        assert torch.equal(packed(x), tiny(x))
    conv = tiny.blocks[1].spatial.conv
    pconv = packed.get_submodule("blocks.1.spatial.conv")
    assert isinstance(pconv, BinaryConv2d) and pconv.weight is None
    assert pconv.weight_bits is not None and pconv.weight_bits.dtype == torch.uint8
    signs = np.unpackbits(pconv.weight_bits.numpy())[: conv.weight_numel]
    assert np.array_equal(signs.astype(bool), (conv.weight.detach() >= 0).flatten().numpy())
    # the caller's model keeps its float weights
    assert isinstance(conv.weight, nn.Parameter)


def test_packed_model_is_inference_only() -> None:
    packed = pack_binary(BNext((8, 16)))
    assert not packed.training
    with pytest.raises(DfcompressError, match="inference-only"):
        packed.train()
    conv = packed.get_submodule("blocks.0.spatial.conv")
    conv.training = True  # bypassing train() must still not silently train
    with pytest.raises(DfcompressError, match="inference-only"):
        conv(torch.randn(1, 8, 4, 4))


def test_pack_binary_needs_binary_layers() -> None:
    with pytest.raises(DfcompressError, match="no BinaryConv2d"):
        pack_binary(nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.parametrize("packed", [False, True])
def test_spec_rebuilds_the_same_state_layout(packed: bool) -> None:
    conv = BinaryConv2d(5, 6, 3, stride=2)
    if packed:
        conv.pack()
    assert kind_of(conv) == "bnext.binary_conv2d"
    spec = conv.dfc_spec()
    assert spec["packed"] is packed
    empty = rebuild("bnext.binary_conv2d", spec)
    a, b = conv.state_dict(), empty.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        k: (v.shape, v.dtype) for k, v in b.items()
    }
    empty.load_state_dict(a)
    x = torch.randn(1, 5, 7, 7)
    assert torch.equal(empty.eval()(x), conv.eval()(x))


def test_packed_model_saves_and_loads_exactly(tmp_path: pytest.TempPathFactory) -> None:
    dfc = pytest.importorskip("dfcompress.io")
    from dfcompress._rebuild import set_constructor

    torch.manual_seed(2)
    net = set_constructor(
        BNext((8, 16, 32)).eval(), "dfcompress.models.bnext:BNext", channels=[8, 16, 32]
    )
    packed = pack_binary(net)
    path = str(tmp_path / "bnext.safetensors")  # type: ignore[operator]
    dfc.save(packed, path)
    back = dfc.load(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    assert all(m.packed for m in back.modules() if isinstance(m, BinaryConv2d))


def test_torchscript_of_tiny(tiny: BNext) -> None:
    x = torch.randn(1, 3, 32, 32)
    scripted = torch.jit.script(tiny)
    with torch.no_grad():
        assert torch.equal(scripted(x), tiny(x))


def test_torchscript_of_packed_model() -> None:
    net = pack_binary(BNext((8, 16, 32)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(net)(x), net(x))


def test_onnx_export_small_bnext(tmp_path: pytest.TempPathFactory) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(3)
    net = BNext((8, 16, 32, 32), num_classes=2).eval()
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "bnext.onnx")  # type: ignore[operator]
    torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(path).run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-4)
