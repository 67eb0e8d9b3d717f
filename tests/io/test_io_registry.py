"""Registered factories, recorded constructors and allowed classes, as a user meets them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from io_files import rewrite_manifest
from torch import nn

import dfcompress as dfc
from dfcompress.errors import DfcompressError, UnsafeFileError
from dfcompress.io import read_manifest


class Head(nn.Module):
    def __init__(self, features: int, hidden: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@dfc.register_factory(params=["features"])
def head(features: int = 3, hidden: int = 4) -> nn.Module:
    return dfc.set_constructor(Head(features, hidden), head, features=features)


def test_a_registered_factory_loads_without_allow(tmp_path: Path) -> None:
    net = head(6)
    path = dfc.save(net, tmp_path / "h.safetensors")
    assert read_manifest(path)["constructor"] == {
        "factory": "test_io_registry:head",
        "kwargs": {"features": 6},
    }
    back = dfc.load(path)
    x = torch.randn(2, 6)
    assert torch.equal(back(x), net.eval()(x))
    assert back.dfc_constructor == {"factory": "test_io_registry:head", "kwargs": {"features": 6}}


def test_a_factory_takes_only_its_declared_params(tmp_path: Path) -> None:
    path = dfc.save(head(6), tmp_path / "h.safetensors")
    rewrite_manifest(path, lambda m: m["constructor"]["kwargs"].update(hidden=2**30))
    with pytest.raises(UnsafeFileError, match=r"does not take \['hidden'\]"):
        dfc.load(path)


def test_a_class_needs_allow_and_its_required_arguments(tmp_path: Path) -> None:
    net = dfc.set_constructor(Head(5), Head, features=5)
    path = dfc.save(net, tmp_path / "c.safetensors")
    with pytest.raises(UnsafeFileError, match=r"allow=\['test_io_registry'\]"):
        dfc.load(path)
    back = dfc.load(path, allow=["test_io_registry"])
    assert back.fc1.in_features == 5
    rewrite_manifest(path, lambda m: m["constructor"].update(kwargs={}))
    with pytest.raises(UnsafeFileError, match=r"needs \['features'\]"):
        dfc.load(path, allow=["test_io_registry"])


def test_save_refuses_a_class_without_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(DfcompressError, match=r"needs arguments \['features'\]"):
        dfc.save(nn.Sequential(Head(5)), tmp_path / "x.safetensors")
    with pytest.raises(DfcompressError, match=r"neither a registered factory nor an nn\.Module"):
        dfc.save(Head(5), tmp_path / "x.safetensors", constructor="math:sqrt")
    assert not (tmp_path / "x.safetensors").exists()


def test_user_factory_overrides_the_file(tmp_path: Path) -> None:
    path = dfc.save(head(6), tmp_path / "h.safetensors")
    calls: list[int] = []

    def build(features: int) -> nn.Module:
        calls.append(features)
        return Head(features)

    dfc.load(path, factory=build)
    assert calls == [6, 6]  # checked on the meta device, then built


def test_files_of_the_previous_format_still_load() -> None:
    from dfcompress.demo import checkpoint_path

    path = checkpoint_path("demo_bnext.safetensors")  # written by dfcompress 0.1.0
    assert read_manifest(path)["format_version"] == 1
    model = dfc.load(path)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1)


@dfc.register_factory
def data_dependent(width: int = 4) -> nn.Module:
    net = nn.Sequential(nn.Linear(width, width))
    scale = float(torch.ones(1).sum().item())  # cannot run on the meta device
    with torch.no_grad():
        net[0].weight.mul_(scale)
    return dfc.set_constructor(net, data_dependent, width=width)


def test_a_factory_that_cannot_run_on_meta_still_saves_and_loads(tmp_path: Path) -> None:
    net = data_dependent(6)
    back = dfc.load(dfc.save(net, tmp_path / "d.safetensors"))
    assert torch.equal(back[0].weight, net[0].weight)
