"""NPR: the published formula, the general window/pixel formula, max mode, errors, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from dfcompress.errors import DfcompressError
from dfcompress.features import NPR


@st.composite
def windowed_images(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """An (N, C, H, W) float batch with H, W multiples of a window k in 2..4."""
    k = draw(st.integers(2, 4))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = k * draw(st.integers(1, 4)), k * draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return x, k


def _reference_npr(x: np.ndarray, k: int, a: int, b: int) -> np.ndarray:
    """ref[p, q] = x[k*floor(p/k) + a, k*floor(q/k) + b] for window k, by explicit index arrays."""
    h, w = x.shape[-2:]
    rows = k * (np.arange(h) // k) + a
    cols = k * (np.arange(w) // k) + b
    return x - x[..., rows[:, None], cols[None, :]]


@given(windowed_images(), st.data())
def test_matches_the_index_formula(case: tuple[torch.Tensor, int], data: st.DataObject) -> None:
    x, k = case
    j = data.draw(st.integers(0, k * k - 1))
    out = NPR(window=k, pixel=j)(x)
    expected = _reference_npr(x.numpy(), k, j // k, j % k)
    np.testing.assert_array_equal(out.numpy(), expected)


@given(windowed_images(), st.data())
def test_zero_at_every_windows_reference_pixel(
    case: tuple[torch.Tensor, int], data: st.DataObject
) -> None:
    x, k = case
    j = data.draw(st.integers(0, k * k - 1))
    out = NPR(window=k, pixel=j)(x)
    assert torch.all(out[..., j // k :: k, j % k :: k] == 0)


@given(windowed_images())
def test_window2_pixel0_is_x_minus_nearest_upsampled_downsample(
    case: tuple[torch.Tensor, int],
) -> None:
    x, _ = case
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        return
    published = x - F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(NPR()(x), published, rtol=0, atol=0)
    torch.testing.assert_close(NPR(scale=2 / 3)(x), published * (2 / 3))


@given(windowed_images())
def test_max_mode_formula(case: tuple[torch.Tensor, int]) -> None:
    x, k = case
    expected = x - F.interpolate(F.max_pool2d(x, k), scale_factor=float(k), mode="nearest")
    torch.testing.assert_close(NPR(window=k, pixel="max")(x), expected, rtol=0, atol=0)
    assert torch.all(NPR(window=k, pixel="max")(x) <= 0)


@given(windowed_images(), st.floats(-10, 10, allow_nan=False), st.sampled_from([0, 3, "max"]))
def test_invariant_to_adding_a_constant(
    case: tuple[torch.Tensor, int], shift: float, pixel: int | str
) -> None:
    x, k = case
    npr = NPR(window=k, pixel=pixel)  # type: ignore[arg-type]
    torch.testing.assert_close(npr(x + shift), npr(x), rtol=0, atol=1e-5)


def test_odd_sizes_crop_by_default_or_raise() -> None:
    x = torch.rand(1, 3, 7, 9)
    out = NPR()(x)
    assert out.shape == (1, 3, 6, 8)
    torch.testing.assert_close(out, NPR()(x[..., :6, :8]))
    with pytest.raises(DfcompressError, match=r"\[1, 3, 7, 9\]"):
        NPR(crop=False)(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 1}, "window=1"),
        ({"window": 2, "pixel": 4}, r"pixel=4 .*0\.\.3"),
        ({"pixel": "min"}, "pixel='min'"),
        ({"scale": float("nan")}, "scale=nan"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        NPR(**kwargs)  # type: ignore[arg-type]


def test_bad_input_names_its_shape() -> None:
    with pytest.raises(DfcompressError, match=r"\[3, 8, 8\]"):
        NPR()(torch.rand(3, 8, 8))
    with pytest.raises(DfcompressError, match=r"\[1, 3, 1, 8\]"):
        NPR()(torch.rand(1, 3, 1, 8))


@settings(max_examples=5)
@given(st.sampled_from([0, 2, "max"]))
def test_torchscript_matches_eager(pixel: int | str) -> None:
    npr = NPR(window=2, pixel=pixel, scale=2 / 3)  # type: ignore[arg-type]
    x = torch.rand(2, 3, 9, 8)
    assert torch.equal(torch.jit.script(npr)(x), npr(x))


def test_onnx_export(tmp_path: pytest.TempPathFactory) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    npr = NPR(window=3, pixel=4, scale=2 / 3)
    x = torch.rand(2, 3, 10, 12)
    path = str(tmp_path / "npr.onnx")  # type: ignore[operator]
    torch.onnx.export(npr, (x,), path, dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(path).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, npr(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("pixel", [0, "max"])
def test_onnx_graph_stays_four_dimensional(
    tmp_path: pytest.TempPathFactory, pixel: int | str
) -> None:
    """No reshape into windows: ONNX Runtime runs 6-D reshapes and slices slowly."""
    onnx = pytest.importorskip("onnx")
    x = torch.rand(2, 3, 8, 8)
    path = str(tmp_path / "npr.onnx")  # type: ignore[operator]
    torch.onnx.export(NPR(pixel=pixel), (x,), path, dynamo=False, input_names=["x"])  # type: ignore[arg-type]
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "Reshape" not in ops, ops
    assert "Resize" in ops
