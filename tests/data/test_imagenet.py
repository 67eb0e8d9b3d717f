"""ImageNet-style crops of scikit-image's photographs: deterministic, normalised, validated."""

from __future__ import annotations

import pytest
import torch

from dfcompress.errors import DfcompressError

pytest.importorskip("skimage")

from dfcompress.data.imagenet import MEAN, STD, crops, normalize, photo


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).reshape(3, 1, 1) + torch.tensor(MEAN).reshape(3, 1, 1)


def test_crops_are_deterministic_and_seeds_differ() -> None:
    a = crops(6, size=32, seed=3)
    assert a.shape == (6, 3, 32, 32)
    assert torch.equal(a, crops(6, size=32, seed=3))
    b = crops(6, size=32, seed=4)
    assert not any(torch.equal(a[i], b[j]) for i in range(6) for j in range(6))
    pixels = _unnormalize(a)
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    # distinct crops, not one repeated
    assert len({round(float(c.sum()), 3) for c in a}) == 6


def test_photo_is_the_centre_crop_of_the_resized_photograph() -> None:
    x = photo("chelsea", size=64)
    assert x.shape == (3, 64, 64)
    pixels = _unnormalize(x)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0 + 1e-6
    assert not torch.equal(x, photo("coffee", size=64))


def test_normalize_uses_imagenet_statistics() -> None:
    x = torch.tensor(MEAN).reshape(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(normalize(x), torch.zeros(3, 2, 2))
    with pytest.raises(DfcompressError, match=r"expects \(\.\.\., 3, H, W\) images, got \[4, 4\]"):
        normalize(torch.zeros(4, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n=0 must be a positive integer"),
        ({"n": 2, "size": 4}, "size=4 is out of range"),
        ({"n": 2, "seed": -1}, "seed=-1 must be"),
        ({"n": 2, "min_scale": 0.0}, r"min_scale=0.0 is out of range: use a number in \(0, 1\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DfcompressError, match=message):
        crops(**kwargs)  # type: ignore[arg-type]


def test_unknown_photo_is_refused() -> None:
    with pytest.raises(DfcompressError, match="photo name='cat' is unknown: use one of"):
        photo("cat")
