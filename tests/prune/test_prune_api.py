from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import torch
from prune_nets import TinyMobileNet, TinyResNet, n_params, one_thread
from torch import nn

from dfcompress._rebuild import set_constructor
from dfcompress.errors import DfcompressError
from dfcompress.prune import PruneConfig, Pruner, prune, sparsity


def test_prune_sensitivity_data_free_as_written() -> None:
    net = TinyMobileNet().eval()
    before = copy.deepcopy(net.state_dict())
    out = prune(net, sensitivity=True, progress=False)
    assert sparsity(out) == pytest.approx(0.5, abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert out(torch.randn(1, 3, 16, 16)).shape == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"amount": -0.1}, "-0.1"),
        ({"amount": 1.0}, "amount=1.0"),
        ({"method": "random"}, "'random'"),
        ({"scope": "layer"}, "'layer'"),
        ({"steps": 0}, "steps=0"),
        ({"method": "structured", "sensitivity": True}, "sensitivity"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(DfcompressError, match=needle.replace(".", r"\.")):
        prune(TinyResNet(), progress=False, **kwargs)  # type: ignore[arg-type]


def test_inplace_mutates_and_default_does_not() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    out = prune(net, 0.5, progress=False)
    assert sparsity(net) == 0.0 and out is not net
    same = prune(net, 0.5, inplace=True, progress=False)
    assert same is net and sparsity(net) == 0.5


def test_structured_through_the_verb_is_smaller() -> None:
    net = TinyResNet()
    out = prune(
        net, 0.5, method="structured", example_inputs=torch.randn(1, 3, 8, 8), progress=False
    )
    assert n_params(out) < 0.4 * n_params(net)


def test_pruner_config_and_lazy_structured_export() -> None:
    cfg = PruneConfig(amount={"conv": 0.2, "linear": 0.2}, scope="local")
    out = Pruner(cfg).apply(TinyResNet(), progress=False)
    assert sparsity(out) == pytest.approx(0.2, abs=0.01)
    assert "PruneConfig" in repr(Pruner(cfg))
    assert callable(importlib.import_module("dfcompress.prune").prune_channels)


def _tiny_resnet() -> nn.Module:
    return TinyResNet(width=16)


def test_p50_saves_sparse_and_reloads_bit_exactly(tmp_path: Path) -> None:
    import dfcompress.io as dio

    net = set_constructor(TinyResNet(width=32), "prune_nets:TinyResNet", width=32)
    dense = dio.save(net, tmp_path / "dense.safetensors")
    small = prune(net, 0.5, progress=False)
    path = dio.save(small, tmp_path / "p50.safetensors")
    assert path.stat().st_size <= 0.60 * dense.stat().st_size
    back = dio.load(path, allow=["prune_nets"])
    for k, v in small.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_structured_model_round_trips(tmp_path: Path) -> None:
    import dfcompress.io as dio

    net = set_constructor(TinyResNet(width=16), "prune_nets:TinyResNet", width=16).eval()
    x = torch.randn(2, 3, 8, 8)
    small = prune(net, 0.5, method="structured", example_inputs=x, progress=False).eval()
    back = dio.load(dio.save(small, tmp_path / "s50.safetensors"), allow=["prune_nets"])
    assert back.layer1.conv1.out_channels == small.layer1.conv1.out_channels
    assert torch.equal(back(x), small(x))


__all__ = ["one_thread"]  # the autouse fixture applies to this module
