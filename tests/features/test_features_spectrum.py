"""Phase-only and magnitude spectra: formulas, invariances, per-image transforms, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dfcompress.errors import DfcompressError
from dfcompress.features import MagnitudeSpectrum, PhaseSpectrum
from dfcompress.features.spectrum import _phase_matmul, _spectrum_matmul


@st.composite
def images(draw: st.DrawFn, n: int | None = None) -> torch.Tensor:
    """A random (N, 3, H, W) image batch in [0, 1) with small sides."""
    batch = n if n is not None else draw(st.integers(1, 3))
    h, w = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _np_phase(x: torch.Tensor) -> np.ndarray:
    gray = x.double().numpy().mean(axis=1, keepdims=True)
    spec = np.fft.fft2(gray, axes=(-2, -1))
    return np.real(np.fft.ifft2(np.exp(1j * np.angle(spec)), axes=(-2, -1)))


def _np_standardize(a: np.ndarray) -> np.ndarray:
    mean = a.mean(axis=(-2, -1), keepdims=True)
    return (a - mean) / a.std(axis=(-2, -1), keepdims=True)


@given(images())
def test_phase_matches_the_formula(x: torch.Tensor) -> None:
    raw = PhaseSpectrum(standardize=False)(x)
    np.testing.assert_allclose(raw.numpy(), _np_phase(x), atol=2e-5)


@given(images(), st.floats(0.01, 100))
def test_phase_is_invariant_to_positive_rescaling(x: torch.Tensor, factor: float) -> None:
    phase = PhaseSpectrum()
    torch.testing.assert_close(phase(x * factor), phase(x), rtol=0, atol=2e-3)


@given(images(n=2))
def test_phase_and_magnitude_are_computed_per_image(x: torch.Tensor) -> None:
    for feature in (PhaseSpectrum(), MagnitudeSpectrum()):
        together = feature(x)
        alone = torch.cat([feature(x[:1]), feature(x[1:])])
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_phase_is_standardized_with_tiny_raw_scale() -> None:
    x = torch.rand(2, 3, 16, 16)
    raw = PhaseSpectrum(standardize=False)(x)
    rms = raw.square().mean(dim=(2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 1 / 16))
    std = PhaseSpectrum()(x)
    torch.testing.assert_close(std.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(std.std(dim=(2, 3), unbiased=False), torch.ones(2, 1))


def test_phase_of_a_constant_image_is_a_delta() -> None:
    out = PhaseSpectrum(standardize=False)(torch.full((1, 3, 5, 7), 0.3))
    expected = torch.zeros(1, 1, 5, 7)
    expected[..., 0, 0] = 1
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@given(images())
def test_magnitude_matches_the_formula(x: torch.Tensor) -> None:
    gray = x.double().numpy().mean(axis=1, keepdims=True)
    spec = np.fft.fftshift(np.fft.fft2(gray, axes=(-2, -1)), axes=(-2, -1))
    expected = _np_standardize(np.log1p(np.abs(spec)))
    np.testing.assert_allclose(MagnitudeSpectrum()(x).numpy(), expected, atol=1e-4)


def test_magnitude_puts_dc_in_the_centre() -> None:
    x = torch.rand(1, 3, 6, 9) + 1.0  # a large mean: the DC term dominates
    mag = MagnitudeSpectrum()(x)[0, 0]
    assert divmod(int(mag.argmax()), 9) == (3, 4)


def test_gray_input_equals_rgb_mean() -> None:
    x = torch.rand(2, 3, 8, 8)
    gray = x.mean(dim=1, keepdim=True)
    for feature in (PhaseSpectrum(), MagnitudeSpectrum()):
        torch.testing.assert_close(feature(gray), feature(x))


@pytest.mark.parametrize("feature", [PhaseSpectrum(), MagnitudeSpectrum()])
@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (3, 8, 8), (1, 3, 1, 8)])
def test_bad_input_names_its_shape(feature: torch.nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(DfcompressError, match=re_shape(shape)):
        feature(torch.rand(shape))


def re_shape(shape: tuple[int, ...]) -> str:
    return r"\[" + ", ".join(map(str, shape)) + r"\]"


def test_bad_eps_is_a_clear_error() -> None:
    with pytest.raises(DfcompressError, match="eps=2"):
        PhaseSpectrum(eps=2)


@given(images())
def test_matmul_transforms_match_fft(x: torch.Tensor) -> None:
    # The ONNX-export path (real DFT matrices) agrees with torch.fft.
    gray = x.mean(dim=1, keepdim=True)
    real, imag = _spectrum_matmul(gray, shift=True)
    spec = torch.fft.fftshift(torch.fft.fft2(gray), dim=(-2, -1))
    torch.testing.assert_close(real, spec.real, atol=1e-4, rtol=0)
    torch.testing.assert_close(imag, spec.imag, atol=1e-4, rtol=0)
    np.testing.assert_allclose(_phase_matmul(gray, 1e-5).numpy(), _np_phase(x), atol=1e-4)


@pytest.mark.parametrize("cls", [PhaseSpectrum, MagnitudeSpectrum])
def test_torchscript_and_onnx_match_eager(
    cls: type[torch.nn.Module], tmp_path: pytest.TempPathFactory
) -> None:
    feature = cls()
    x = torch.rand(2, 3, 12, 10)
    torch.testing.assert_close(torch.jit.script(feature)(x), feature(x))
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = str(tmp_path / "spectrum.onnx")  # type: ignore[operator]
    torch.onnx.export(feature, (x,), path, dynamo=False, input_names=["x"])
    (got,) = ort.InferenceSession(path).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, feature(x).numpy(), atol=1e-3)
