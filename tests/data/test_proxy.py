"""The proxy real-vs-generated task: determinism, balance, range, disjoint splits."""

from __future__ import annotations

import itertools

import pytest
import torch

from dfcompress.data import UPSAMPLERS, ProxyConfig, loader, make_proxy
from dfcompress.data._photos import SPLITS, tiles
from dfcompress.data._pipeline import upsample
from dfcompress.errors import DfcompressError

pytest.importorskip("skimage")


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    a = make_proxy("val", size=32, n=40, seed=3)
    b = make_proxy("val", size=32, n=40, seed=3, config=ProxyConfig())
    c = make_proxy("val", size=32, n=40, seed=4)
    assert torch.equal(a.tensors()[0], b.tensors()[0]) and a.names == b.names
    assert not torch.equal(a.tensors()[0], c.tensors()[0])


@pytest.mark.parametrize("n", [1, 41, 64])
def test_class_balance_range_and_names(n: int) -> None:
    ds = make_proxy("test", size=32, n=n, seed=0)
    images, labels = ds.tensors()
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert int(labels.sum()) == n - n // 2
    for (_, label, name), y in zip(ds, labels.tolist(), strict=True):
        assert label == y
        kind = name.split("/")
        assert (kind[0], len(kind)) == (("fake", 3) if label else ("real", 2))
        if label:
            assert kind[1] in UPSAMPLERS
        assert name.endswith(".png")
    assert len(set(ds.names)) == n


def test_images_are_not_degenerate() -> None:
    images, labels = make_proxy("train", size=32, n=400, seed=0).tensors()
    per_image_std = images.flatten(1).std(dim=1)
    assert float(per_image_std.median()) > 0.02
    # brightness is no give-away: class means agree within sampling error (~0.02 here)
    gap = images[labels == 1].mean() - images[labels == 0].mean()
    assert abs(float(gap)) < 0.06


@pytest.mark.parametrize("size", [32, 64])
def test_splits_never_share_source_pixels(size: int) -> None:
    tile = 2 * size
    owned = {s: tiles(s, tile, 6 * size) for s in SPLITS}
    assert all(owned[s] for s in SPLITS)
    for s1, s2 in itertools.combinations(SPLITS, 2):
        for (p1, y1, x1), (p2, y2, x2) in itertools.product(owned[s1], owned[s2]):
            if p1 == p2:
                assert abs(y1 - y2) >= tile or abs(x1 - x2) >= tile
    n_train, n_test = len(owned["train"]), len(owned["test"])
    assert 2 * n_test <= n_train


def test_config_selects_upsamplers() -> None:
    ds = make_proxy("val", size=32, n=30, config=ProxyConfig(upsamplers=("transposed",)))
    fakes = [n for n in ds.names if n.startswith("fake/")]
    assert fakes and all(n.startswith("fake/transposed/") for n in fakes)


@pytest.mark.parametrize("method", UPSAMPLERS)
@pytest.mark.parametrize("factor", [2, 4])
def test_upsamplers_keep_shape_and_flat_colour(method: str, factor: int) -> None:
    low = torch.ones(2, 3, 8, 8) * torch.tensor([0.2, 0.5, 0.9])[None, :, None, None]
    out = upsample(low, factor, method)
    assert out.shape == (2, 3, 8 * factor, 8 * factor)
    assert torch.allclose(out, low.mean(dim=(2, 3), keepdim=True).expand_as(out), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"upsamplers": ("lanczos",)}, "'lanczos' is unknown"),
        ({"upsamplers": ()}, "empty"),
        ({"factors": (3,)}, "factor 3"),
        ({"noise": -0.1}, "noise=-0.1 is out of range"),
        ({"mix": 1.5}, "mix=1.5"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DfcompressError, match=match):
        ProxyConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(DfcompressError, match="split='dev'"):
        make_proxy("dev")  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="size=8"):
        make_proxy(size=8)
    with pytest.raises(DfcompressError, match="n=0"):
        make_proxy(n=0)
    with pytest.raises(DfcompressError, match="not divisible"):
        make_proxy("val", size=36, n=4, config=ProxyConfig(factors=(8,)))


def test_loader_batches_and_seeded_shuffle() -> None:
    first = [next(iter(loader("train", size=32, n=32, batch_size=8)))[2] for _ in range(2)]
    assert first[0] == first[1]
    images, labels, names = next(iter(loader("val", size=32, n=10, batch_size=10)))
    assert images.shape == (10, 3, 32, 32) and labels.shape == (10,) and len(names) == 10
    assert list(names) == make_proxy("val", size=32, n=10).names  # val is not shuffled
